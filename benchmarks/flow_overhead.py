"""Prefect overhead of the ``curate`` flow: flow wall time / the same stage functions called directly.

Pool: ``--n`` samples (default 100,000) built by repeating the embedded ``builtin:digits-web``
pool (1,457 PNGs) with fresh sample ids and a light per-copy perturbation of each image (one pixel
row shifted by the copy number, re-encoded), written as Parquet units of ``--unit-rows`` rows.

Both sides score every unit from scratch (score cache off, Prefect cache refreshed), select with
KD³ under a 30% budget and write the dataset:

* direct: ``pipeline.prepare`` → ``score.score_unit`` per unit → ``pipeline.finish``;
* flow: ``curate`` (prepare task → one scoring task per unit → finish task → artifacts) on the
  default local task runner, against a temporary Prefect server (``prefect_test_harness``) unless
  ``PREFECT_API_URL`` points at a running one. The server's start-up is timed and reported
  separately, outside the ratio.

    python benchmarks/flow_overhead.py               # 100,000 samples
    python benchmarks/flow_overhead.py --n 10000     # smaller, for a smoke test

With the default sizes (100,000 samples in units of 10,000) and without ``--no-write``, the table is
spliced into ``docs/benchmarks/flow_overhead.md`` (``benchmarks/doc_tables.py``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import runpy
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_pool(root: Path, *, n: int, unit_rows: int) -> int:
    """Write an ``n``-sample Parquet pool under ``root`` from repeated, perturbed built-in rows."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from kdata.pools.spec import open_pool

    base = open_pool("builtin:digits-web").read_all()
    imgs = base.column("image").to_pylist()
    decoded = []
    for b in imgs:
        try:
            decoded.append(np.asarray(Image.open(io.BytesIO(b)).convert("L")))
        except Exception:
            decoded.append(None)  # junk rows stay junk (kept as their original bytes)
    root.mkdir(parents=True, exist_ok=True)
    rows, part, written = [], 0, 0
    copy = 0
    while written < n:
        take = min(base.num_rows, n - written)
        t = base.slice(0, take)
        ids = [f"{s}~c{copy}" for s in t.column("sample_id").to_pylist()]
        new_imgs = []
        for i in range(take):
            arr = decoded[i]
            if arr is None or copy == 0:
                new_imgs.append(imgs[i])
                continue
            arr = np.roll(arr, copy % 3 - 1, axis=copy % 2)  # a 1-pixel shift per copy
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG")
            new_imgs.append(buf.getvalue())
        t = t.set_column(t.schema.get_field_index("sample_id"), "sample_id", pa.array(ids))
        t = t.set_column(t.schema.get_field_index("image"), "image", pa.array(new_imgs, pa.binary()))
        rows.append(t)
        written += take
        copy += 1
    table = pa.concat_tables(rows)
    for start in range(0, table.num_rows, unit_rows):
        pq.write_table(table.slice(start, unit_rows), root / f"part-{part:05d}.parquet", row_group_size=4096)
        part += 1
    return part


def direct(cfg, *, out: str, batch_size: int) -> float:
    """The stage functions the flow calls, in one process, no Prefect."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kdata.pipeline.config import RunOptions
    from kdata.pipeline.curate import Scored, finish
    from kdata.pipeline.prepare import prepare
    from kdata.scoring.score import score_unit

    t0 = time.perf_counter()
    prep = prepare(cfg, opts=RunOptions(device="cpu", batch_size=batch_size))
    tables, quarantined, n_in = [], [], 0
    for unit in prep.pool.units:
        path, q, n, _ = score_unit(unit, prep.teacher, prep.student, config=prep.score_cfg, device=prep.device,
                                   cache=False)
        tables.append(pq.read_table(path))
        quarantined += q
        n_in += n
    finish(prep, Scored(scores=pa.concat_tables(tables), quarantined=quarantined,
                        info={"n_in": n_in, "units": len(prep.pool.units), "cache_hits": 0}), out=out)
    return time.perf_counter() - t0


def markdown(r: dict) -> str:
    """The docs block: how it was measured (pool, cores, versions, seconds, command) and the table."""
    import prefect
    import torch

    head = (f"Pool: {r['n']:,} samples in {r['units']} units (built in {r['pool_build_s']:.0f} s, outside the "
            f"timings), KD³ at 30%, scoring on the CPU from scratch on both sides; prefect {prefect.__version__}, "
            f"torch {torch.__version__}, {r['threads']} torch threads. Measured in {r['seconds']:.0f} s on "
            f"{r['cpus']} CPU cores (load average {r['load']:.1f} at the start) with:\n\n    {r['command']}\n")
    rows = ["| pool | direct stages | curate flow | ratio flow / direct | server start-up (excluded) | "
            "identical shards |", "|---|---:|---:|---:|---:|---|",
            f"| {r['n']:,} samples, {r['units']} units | {r['direct_s']:.1f} s | {r['flow_s']:.1f} s | "
            f"**{r['ratio']:.3f}** (target ≤ {r['target_ratio']}) | {r['server_startup_s']:.1f} s | "
            f"{'yes' if r['same_shards'] else '**no**'} |"]
    return head + "\n" + "\n".join(rows) + "\n"


# long: one run of both sides, then its report
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="pool samples (default 100,000)")
    ap.add_argument("--unit-rows", type=int, default=10_000, help="rows per pool unit (one scoring task each)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--work", default=None, help="working directory (default: a temporary one)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks/flow_overhead.md")
    a = ap.parse_args(argv)
    t_start, load = time.perf_counter(), os.getloadavg()[0]

    work = Path(a.work or tempfile.mkdtemp(prefix="kdata-flow-bench-"))
    os.environ.setdefault("KDATA_CACHE", str(work / "cache"))
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    from kdata.models.spec import load_model
    from kdata.pipeline.config import SelectConfig

    load_model("builtin:digits-teacher"), load_model("builtin:digits-student")  # trained/cached up front
    pool = work / f"pool-{a.n}"
    t0 = time.perf_counter()
    units = build_pool(pool, n=a.n, unit_rows=a.unit_rows) if not pool.exists() else len(list(pool.glob("*.parquet")))
    t_build = time.perf_counter() - t0
    cfg = SelectConfig(pool=str(pool), method="kd3", budget="0.3")

    from kdata.flows import curate as curate_mod
    from contextlib import nullcontext

    harness = nullcontext()
    t0 = time.perf_counter()
    if not os.environ.get("PREFECT_API_URL"):
        from prefect.testing.utilities import prefect_test_harness

        harness = prefect_test_harness(server_startup_timeout=120)
        harness.__enter__()
    t_server = time.perf_counter() - t0
    try:
        t_direct = direct(cfg, out=str(work / "out-direct"), batch_size=a.batch_size)
        t0 = time.perf_counter()
        result = curate_mod.curate(select=cfg.to_dict(), out=str(work / "out-flow"),
                                   run={"device": "cpu", "batch_size": a.batch_size, "cache": False})
        t_flow = time.perf_counter() - t0
    finally:
        harness.__exit__(None, None, None)
    from kdata.dataset.writer import read_manifest

    same = ([f["sha256"] for f in read_manifest(work / "out-direct")["files"]]
            == [f["sha256"] for f in result["files"]])
    report = {"n": a.n, "units": units, "pool_build_s": round(t_build, 2), "server_startup_s": round(t_server, 2),
              "direct_s": round(t_direct, 2), "flow_s": round(t_flow, 2), "ratio": round(t_flow / t_direct, 3),
              "same_shards": same, "target_ratio": 1.2}
    if a.json:
        print(json.dumps(report))
    else:
        print(f"pool: {a.n:,} samples in {units} units (built in {t_build:.1f}s)")
        print(f"temporary Prefect server start-up: {t_server:.1f}s (excluded)")
        print(f"direct stage calls: {t_direct:.1f}s   curate flow: {t_flow:.1f}s")
        print(f"ratio flow/direct: {t_flow / t_direct:.3f} (target <= 1.2)   identical shards: {same}")
    given = sys.argv[1:] if argv is None else list(argv)
    if "--work" in given:  # where the pool is kept does not change the figures
        i = given.index("--work")
        given = given[:i] + given[i + 2:]
    report.update(seconds=time.perf_counter() - t_start, load=load, cpus=os.cpu_count(),
                  threads=torch.get_num_threads(),
                  command="python benchmarks/flow_overhead.py" + "".join(" " + shlex.quote(x) for x in given
                                                                         if x != "--json"))
    md = markdown(report)
    if not a.json:
        print("\n" + md)
    if not a.no_write and (a.n, a.unit_rows) == (100_000, 10_000):
        runpy.run_path(str(ROOT / "benchmarks" / "doc_tables.py"))["splice"]("flow_overhead", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
