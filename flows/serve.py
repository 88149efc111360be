"""Entry point: `python flows/serve.py --help` (the flow lives in `kdata.flows.serve`)."""

import sys

from kdata.flows.serve import main

if __name__ == "__main__":
    sys.exit(main())
