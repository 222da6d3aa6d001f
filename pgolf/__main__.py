"""``python -m pgolf`` (and ``torchrun -m pgolf``): the ``pgolf`` command line."""

import sys

from pgolf.cli import main

if __name__ == "__main__":
    sys.exit(main())
