"""``python -m kdata``: the ``kdata`` command."""

import sys

from kdata.cli import main

if __name__ == "__main__":
    sys.exit(main())
