"""Entry point: `python flows/distill.py --help` (the flow lives in `kdata.flows.distill`)."""

import sys

from kdata.flows.distill import distill  # noqa: F401  (prefect.yaml entrypoint flows/distill.py:distill)
from kdata.flows.distill import main

if __name__ == "__main__":
    sys.exit(main())
