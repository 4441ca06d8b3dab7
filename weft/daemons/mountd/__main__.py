"""python -m weft.daemons.mountd"""
import sys

from weft.daemons.mountd.cli import main

sys.exit(main())
