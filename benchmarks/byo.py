"""Bring-your-own predictions at scale: time and peak memory of ``kdata select --scores``.

    python benchmarks/byo.py                        # N = 1,000,000 rows, C = 1,000 (an 8 GB file)
    python benchmarks/byo.py --n 250000             # smaller
    python benchmarks/byo.py --n 10000000 --topk 5  # N = 10M rows as top-5 probabilities (0.9 GB)

1. Writes a Parquet file of full float32 teacher/student logits (``sample_id``,
   ``teacher_logits``, ``student_logits`` as lists; row groups of 16,384 rows), or with
   ``--topk K`` the top-K probabilities (``*_topk_idx``/``*_topk_prob``), in a temporary folder
   (``--dir``), unless it is already there.
2. Baseline, in a fresh process, after reading the file once into the page cache: read every
   logit with pyarrow (``iter_batches``, no pre-buffering) and turn each batch into a float32
   array, nothing else.
3. In a fresh process: ``kdata select --scores FILE --method rad --budget 0.1 --out OUT``, which
   validates, streams and scores every row, selects and writes the curated shards.
Prints wall seconds and peak RSS of both, and the ratio of the times; with the default sizes
(N = 1,000,000, C = 1,000 full logits) and without ``--no-write``, the table is spliced into
``docs/benchmarks/byo.md`` (``benchmarks/doc_tables.py``).
"""

from __future__ import annotations

import argparse
import os
import runpy
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


_READ = ("import sys, numpy as np, pyarrow.parquet as pq\n"
         "f = pq.ParquetFile(sys.argv[1], pre_buffer=False); n = 0\n"
         "cols = [c for c in f.schema_arrow.names if c != 'sample_id']\n"
         "for b in f.iter_batches(batch_size=16384, columns=cols):\n"
         "    for col in b.columns:\n"
         "        a = col.flatten().to_numpy(); n += a.size\n"
         "print('values', n)")


def write_file(path: Path, n: int, c: int, *, topk: int = 0, group: int = 16_384) -> None:
    rng = np.random.default_rng(0)
    tmp = path.with_suffix(".tmp")
    names = [f"{w}_topk_{x}" for w in ("teacher", "student") for x in ("idx", "prob")] if topk else \
        ["teacher_logits", "student_logits"]
    types = [pa.list_(pa.int32() if n_.endswith("idx") else pa.float32()) for n_ in names]
    schema = pa.schema([("sample_id", pa.string()), *zip(names, types)])

    def lists(x: np.ndarray, typ) -> pa.Array:
        m, w = x.shape
        return pa.ListArray.from_arrays(pa.array(np.arange(0, (m + 1) * w, w, dtype=np.int32)),
                                        pa.array(x.reshape(-1), typ.value_type))

    with pq.ParquetWriter(tmp, schema, compression="none") as w:
        for i in range(0, n, group):
            m = min(group, n - i)
            t = rng.standard_normal((m, c), dtype=np.float32) * 3
            s = t + rng.standard_normal((m, c), dtype=np.float32) * 1.5
            if topk:
                cols = []
                for z in (t, s):
                    idx = np.argpartition(-z, topk, axis=1)[:, :topk].astype(np.int32)
                    p = np.exp(z - z.max(1, keepdims=True))
                    p /= p.sum(1, keepdims=True)
                    cols += [idx, np.take_along_axis(p, idx, 1).astype(np.float32)]
            else:
                cols = [t, s]
            w.write_table(pa.table({"sample_id": pa.array([f"r{j}" for j in range(i, i + m)]),
                                    **{n_: lists(x, typ) for n_, x, typ in zip(names, cols, types)}},
                                   schema=schema))
    os.replace(tmp, path)


def measure(cmd: list[str], *, env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of ``cmd`` run as a child (``benchmarks/child_rss.py``)."""
    return runpy.run_path(str(Path(__file__).resolve().parent / "child_rss.py"))["measure"](cmd, env=env)


def markdown(r: dict) -> str:
    """The docs block: how it was measured (sizes, cores, versions, command) and this run's row."""
    what = f"top-{r['topk']} of {r['c']:,} classes" if r["topk"] else f"{r['c']:,} full logits"
    head = (f"N = {r['n']:,} rows × {what} as float32 lists, one file of {r['gb']:.1f} GB in row groups of "
            f"16,384 rows, read once into the page cache first; each side in a fresh process. pyarrow "
            f"{pa.__version__}, numpy {np.__version__}. Measured in {r['seconds']:.0f} s (writing the file "
            f"included) on {r['cpus']} CPU cores (load average {r['load']:.1f} at the start) with:\n\n"
            f"    {r['command']}\n")
    rows = ["| input | baseline read | `kdata select --scores` (rad, 10%) | rows/s | peak RSS (read / kdata) |",
            "|---|---:|---:|---:|---:|",
            f"| {r['n']:,} × {what}, {r['gb']:.1f} GB | {r['base_s']:.1f} s | {r['kdata_s']:.1f} s "
            f"({r['kdata_s'] / r['base_s']:.2f}× the read) | {r['n'] / r['kdata_s']:,.0f} | "
            f"{r['base_rss'] / 1024:.2f} / {r['kdata_rss'] / 1024:.2f} GB |"]
    return head + "\n" + "\n".join(rows) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--c", type=int, default=1000)
    ap.add_argument("--topk", type=int, default=0, help="write top-K probabilities instead of full logits")
    ap.add_argument("--dir", default=None, help="where the file is written (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the file for the next run")
    ap.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks/byo.md")
    args = ap.parse_args(argv)
    t_start, load = time.perf_counter(), os.getloadavg()[0]
    folder = Path(args.dir or tempfile.mkdtemp(prefix="kdata-bench-byo-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (f"top{args.topk}-{args.n}x{args.c}.parquet" if args.topk else f"logits-{args.n}x{args.c}.parquet")
    if not path.exists():
        t0 = time.perf_counter()
        write_file(path, args.n, args.c, topk=args.topk)
        print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s")
    print(f"# kdata BYO benchmark: N={args.n:,} C={args.c:,} {f'top-{args.topk} probabilities' if args.topk else 'logits'}, "
          f"file {path.stat().st_size / 1e9:.2f} GB "
          f"load={load:.1f}")
    t0 = time.perf_counter()  # into the page cache first, so that both timings below read from it
    with open(path, "rb") as f:
        while f.read(1 << 23):
            pass
    print(f"warm-up: the file read once in {time.perf_counter() - t0:.1f} s")
    base_s, base_rss = measure([sys.executable, "-c", _READ, str(path)])
    print(f"baseline: pyarrow read of every column {base_s:7.1f} s  peak RSS {base_rss:7.0f} MB")
    out = folder / "curated"
    shutil.rmtree(out, ignore_errors=True)
    kdata = [sys.executable, "-m", "kdata.cli", "select", "--scores", str(path), "--method", "rad",
             "--budget", "0.1", "--out", str(out)]
    sec, rss = measure(kdata)
    print(f"kdata select --scores (rad, 10%)       {sec:7.1f} s  peak RSS {rss:7.0f} MB  "
          f"= {sec / base_s:.2f}x the read, {args.n / sec:,.0f} rows/s")
    gb = path.stat().st_size / 1e9
    shutil.rmtree(out, ignore_errors=True)
    if not args.keep and not args.dir:
        shutil.rmtree(folder, ignore_errors=True)
    given = sys.argv[1:] if argv is None else list(argv)
    if "--dir" in given:  # where the file is kept does not change the figures
        i = given.index("--dir")
        given = given[:i] + given[i + 2:]
    given = [a for a in given if a != "--keep"]
    report = {"n": args.n, "c": args.c, "topk": args.topk, "gb": gb, "base_s": base_s, "base_rss": base_rss,
              "kdata_s": sec, "kdata_rss": rss, "load": load, "cpus": os.cpu_count(),
              "seconds": time.perf_counter() - t_start,
              "command": "python benchmarks/byo.py" + "".join(" " + shlex.quote(a) for a in given)}
    md = markdown(report)
    print("\n" + md)
    if not args.no_write and (args.n, args.c, args.topk) == (1_000_000, 1000, 0):
        runpy.run_path(str(Path(__file__).resolve().parent / "doc_tables.py"))["splice"]("byo", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
