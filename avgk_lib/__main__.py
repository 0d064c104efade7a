"""``python -m avgk_lib``: the command line of :mod:`avgk_lib.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
