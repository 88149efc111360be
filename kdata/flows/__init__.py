"""Prefect flows over the pipeline (``pip install 'kdata[flows]'``): ``curate``, ``distill`` and ``serve``.

Importable by name, so Dask workers and ``prefect deploy`` find them; the top-level ``flows/``
directory keeps the runnable entry points and ``prefect.yaml``.
"""

import importlib.util
import os
import sys
from pathlib import Path

# The temporary Prefect server a flow starts (no PREFECT_API_URL) would try to send usage telemetry and log
# an ERROR line on every machine without internet access; kdata's flows send none unless the user opts in.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# A flow run as a program (``python flows/curate.py``, ``python -m kdata.flows.curate``: while -m locates
# the module, argv[0] is "-m") without Prefect installed: one line naming the extra and exit 2, not the
# ModuleNotFoundError traceback of the flow modules' imports. Imported as a library, nothing happens here.
def _has_prefect() -> bool:
    try:
        return importlib.util.find_spec("prefect") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules["prefect"] is None
        return False


ENTRY_POINTS = ("curate.py", "distill.py", "generate.py", "serve.py")  # the repository's flows/*.py


def _run_as_a_flow() -> bool:
    if not sys.argv:
        return False
    script = Path(sys.argv[0])
    return sys.argv[0] == "-m" or (script.parent.name == "flows" and script.name in ENTRY_POINTS)


if _run_as_a_flow() and not _has_prefect():
    print("kdata: error: the Prefect flows need prefect: pip install 'kdata[flows]'", file=sys.stderr)
    raise SystemExit(2)
