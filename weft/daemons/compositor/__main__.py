import sys

from weft.daemons.compositor.cli import main

sys.exit(main())
