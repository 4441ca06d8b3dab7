import sys

from weft.daemons.runtime.cli import main

sys.exit(main())
