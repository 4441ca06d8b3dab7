import sys

from weft.daemons.appd.cli import main

sys.exit(main())
