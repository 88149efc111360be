"""Entry point: `python flows/curate.py --help` (the flow lives in `kdata.flows.curate`)."""

import sys

from kdata.flows.curate import curate  # noqa: F401  (prefect.yaml entrypoint flows/curate.py:curate)
from kdata.flows.curate import main

if __name__ == "__main__":
    sys.exit(main())
