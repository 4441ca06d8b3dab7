import sys

from weft.daemons.app_shell.cli import main

sys.exit(main())
