import sys

from weft.daemons.shell.cli import main

sys.exit(main())
