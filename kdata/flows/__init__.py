"""Prefect flows over the pipeline (``pip install 'kdata[flows]'``): ``curate``, ``distill`` and ``serve``.

Importable by name, so Dask workers and ``prefect deploy`` find them; the top-level ``flows/``
directory keeps the runnable entry points and ``prefect.yaml``.
"""

import os

# The temporary Prefect server a flow starts (no PREFECT_API_URL) would try to send usage telemetry and log
# an ERROR line on every machine without internet access; kdata's flows send none unless the user opts in.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
