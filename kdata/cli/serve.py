"""``kdata serve``: serve the curate and distill Prefect flows with cron schedules from a config."""

from __future__ import annotations

from pathlib import Path

from kdata.core.errors import KdataError
from kdata.core.extras import require


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve the curate and distill flows on cron schedules (Prefect)",
                       description="Serve the curate and distill Prefect flows as deployments with the cron "
                                   "schedules of CONFIG. Schedules need a real server: run `prefect server start` "
                                   "and set PREFECT_API_URL first. Needs `pip install 'kdata[flows]'`.")
    p.add_argument("--config", default="flows/config.yaml", help="flow config YAML (default flows/config.yaml)")
    p.add_argument("--limit", type=int, default=None, help="maximum concurrent flow runs")
    p.set_defaults(func=run)


def check_config(path: str) -> dict:
    """The flow config read and checked before anything else is said or started (``load_config``): a bad
    one is one line naming the file, never after the server's warnings."""
    from kdata.flows.config import load_config

    if not Path(path).is_file():
        raise KdataError(f"{path}: config file not found" if not Path(path).exists() else f"{path}: not a file")
    try:
        return load_config(path)
    except KdataError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise KdataError(f"{path}: {exc}", exit_code=exc.exit_code) from None


def run(args) -> int:
    check_config(args.config)
    require("flows", "prefect", "prefect_dask")
    from kdata.flows.serve import serve_config

    serve_config(args.config, limit=args.limit)
    return 0
