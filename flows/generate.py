"""Entry point: `python flows/generate.py --help` (the flow lives in `kdata.flows.generate`)."""

import sys

from kdata.flows.generate import (
    generate,  # noqa: F401  (entrypoint flows/generate.py:generate)
    main,
)

if __name__ == "__main__":
    sys.exit(main())
