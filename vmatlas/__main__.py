import sys

from vmatlas.cli import main

sys.exit(main())
