"""The ``distill`` Prefect flow: train a student on a curated dataset version and record its accuracy.

Thin by design: it calls the trainer (``kdata.pipeline.distill.train_student``, the function behind ``kdata train``)
and publishes the accuracy as a Prefect artifact. ``data`` may be a dataset directory or a glob
such as ``runs/curated-*``, in which case the newest *complete* version (one with a manifest) is
used, so a nightly schedule trains on what last night's curate run wrote.

    python flows/distill.py --data runs/curated-* --eval builtin:digits-test --epochs 3
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from kdata.core.errors import KdataError


def latest_dataset(data: str) -> str:
    """``data`` itself when it holds a manifest, else the newest complete match of the glob."""
    if (Path(data) / "manifest.json").exists():
        return data
    done = [p for p in glob.glob(data.replace("{version}", "*")) if (Path(p) / "manifest.json").exists()]
    if not done:
        raise KdataError(f"{data}: no complete curated dataset (no manifest.json) found")
    return max(done, key=lambda p: (Path(p) / "manifest.json").stat().st_mtime)


@task(name="train-student", retries=1, retry_delay_seconds=5)
def train_task(shards: str, *, student: str, eval: str | None, epochs: int, seed: int, device: str,
               out: str | None) -> dict:
    """Train with the library trainer (the function behind ``kdata train``)."""
    from kdata.pipeline.distill import train_student
    from kdata.training.train import TrainConfig

    cfg = TrainConfig(epochs=epochs, seed=seed, device=device)
    log = train_student(shards=shards, student=student, eval=eval, config=cfg, out=out, quiet=True)
    return {k: log.get(k) for k in ("accuracy", "accuracy_before", "epochs", "seconds", "files") if k in log}


@flow(name="distill", log_prints=True)
def distill(data: str = "runs/curated-{version}", student: str = "builtin:digits-student",
            eval: str | None = "builtin:digits-test", epochs: int = 3, seed: int = 0, device: str = "auto",
            out: str | None = None) -> dict:
    """Train ``student`` on the newest curated dataset matching ``data``; record accuracy before/after."""
    logger = get_run_logger()
    shards = latest_dataset(data)
    target = out or str(Path(shards) / "student")
    result = train_task(shards, student=student, eval=eval, epochs=epochs, seed=seed, device=device, out=target)
    acc, before = result.get("accuracy"), result.get("accuracy_before")
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    md = (f"# kdata distill\n\n- dataset: `{shards}`\n- student: `{student}` → `{target}`\n"
          f"- eval: `{eval}`\n- accuracy: {fmt(before)} → **{fmt(acc)}** after {epochs} epoch(s)\n")
    create_markdown_artifact(md, key="distill-summary", description="student accuracy on the eval set")
    logger.info("distilled on %s: accuracy %s → %s", shards, fmt(before), fmt(acc))
    return {"data": shards, "out": target, **result}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="flows/distill.py", description="Run the kdata distill flow once.")
    p.add_argument("--data", required=True, help="curated dataset dir, or a glob (newest complete one is used)")
    p.add_argument("--student", default="builtin:digits-student")
    p.add_argument("--eval", default="builtin:digits-test")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    try:
        r = distill(data=a.data, student=a.student, eval=a.eval, epochs=a.epochs, seed=a.seed, device=a.device,
                    out=a.out)
    except KdataError as exc:
        print(f"distill: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(r, default=str))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
