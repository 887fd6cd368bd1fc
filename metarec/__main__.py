"""``python -m metarec ...``: the same command line as the ``metarec`` console script."""

import sys

from metarec.cli import main

if __name__ == "__main__":
    sys.exit(main())
