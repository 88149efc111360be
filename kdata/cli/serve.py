"""``kdata serve``: serve the curate and distill Prefect flows with cron schedules from a config."""

from __future__ import annotations

import sys
from pathlib import Path

from kdata.core.errors import KdataError
from kdata.core.extras import require

DEFAULT = "flows/config.yaml"
EXAMPLE = Path(__file__).resolve().parents[1] / "flows" / "config.yaml"  # package data


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve the curate and distill flows on cron schedules (Prefect)",
                       description="Serve the curate and distill Prefect flows as deployments with the cron "
                                   "schedules of CONFIG. Schedules need a real server: run `prefect server start` "
                                   "and set PREFECT_API_URL first. Needs `pip install 'kdata[flows]'`.")
    p.add_argument("--config", default=DEFAULT, help=f"flow config YAML (default {DEFAULT}, relative to the current "
                                                     "directory)")
    p.add_argument("--example-config", action="store_true",
                   help="print the example flow config shipped with kdata and exit (kdata serve --example-config "
                        "> flows/config.yaml)")
    p.add_argument("--limit", type=int, default=None, help="maximum concurrent flow runs")
    p.set_defaults(func=run)


def check_config(path: str) -> dict:
    """The flow config read and checked before anything else is said or started (``load_config``): a bad
    one is one line naming the file, never after the server's warnings."""
    from kdata.flows.config import load_config

    if not Path(path).exists() and path == DEFAULT:
        raise KdataError(f"{path}: config file not found in {Path.cwd()} (the default, relative to the current "
                         f"directory); start from the example: kdata serve --example-config > kdata-flows.yaml, then "
                         "kdata serve --config kdata-flows.yaml")
    if not Path(path).is_file():
        raise KdataError(f"{path}: config file not found" if not Path(path).exists() else f"{path}: not a file")
    try:
        return load_config(path)
    except KdataError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise KdataError(f"{path}: {exc}", exit_code=exc.exit_code) from None


def run(args) -> int:
    if args.example_config:
        sys.stdout.write(EXAMPLE.read_text())
        return 0
    check_config(args.config)
    require("flows", "prefect", "prefect_dask")
    from kdata.flows.serve import serve_config

    serve_config(args.config, limit=args.limit)
    return 0
