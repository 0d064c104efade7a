"""``python -m avgk_book``: the command line of :mod:`avgk_book.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
