"""``kdata serve``: serve the curate and distill Prefect flows with cron schedules from a config."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from kdata.core.errors import KdataError


def _flows_dir(arg: str | None) -> Path:
    """``--flows-dir``, ``$KDATA_FLOWS_DIR``, ./flows, or flows/ of the source checkout."""
    for cand in (arg, os.environ.get("KDATA_FLOWS_DIR"), "flows", Path(__file__).resolve().parents[2] / "flows"):
        if cand and (Path(cand) / "serve.py").exists():
            return Path(cand)
    raise KdataError("flows/serve.py not found: pass --flows-dir (the flows/ directory of the kdata checkout)")


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve the curate and distill flows on cron schedules (Prefect)",
                       description="Serve the curate and distill Prefect flows as deployments with the cron "
                                   "schedules of CONFIG. Schedules need a real server: run `prefect server start` "
                                   "and set PREFECT_API_URL first.")
    p.add_argument("--config", default="flows/config.yaml", help="flow config YAML (default flows/config.yaml)")
    p.add_argument("--flows-dir", default=None, help="directory holding curate.py, distill.py, serve.py")
    p.add_argument("--limit", type=int, default=None, help="maximum concurrent flow runs")
    p.set_defaults(func=run)


def run(args) -> int:
    if not Path(args.config).exists():
        raise KdataError(f"{args.config}: config file not found")
    path = _flows_dir(args.flows_dir) / "serve.py"
    spec = importlib.util.spec_from_file_location("kdata_flows_serve", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.serve_config(args.config, flows_dir=path.parent, limit=args.limit)
    return 0
