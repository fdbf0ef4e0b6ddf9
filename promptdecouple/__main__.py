"""`python -m promptdecouple ...`: the same command as the `promptdecouple` console script."""

import sys

from promptdecouple.cli import main

if __name__ == "__main__":
    sys.exit(main())
