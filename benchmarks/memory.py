"""Memory at scale: peak RSS of kdata's commands on one large pool file, against holding that file.

    python benchmarks/memory.py                      # 20,000 images of ~40 KB in one Parquet file (0.8 GB)
    python benchmarks/memory.py --n 80000            # 3.2 GB
    python benchmarks/memory.py --n 2000 --lines 5000  # smoke run: ~1 min on 2 cores

1. Writes, in a temporary folder (``--dir`` keeps it), an image pool as ONE Parquet file with ONE
   row group (pyarrow's default up to a million rows: what an export usually looks like) of
   ``--n`` random grey PNGs of ``--px`` pixels square (about 40 KB each at 200 px), ten labels,
   and bring-your-own predictions for it (``sample_id``, ten teacher/student logits); and a JSONL
   text pool of ``--lines`` lines of ``--words`` words with ``teacher_logprob``/``reference_logprob``.
2. Baselines, each in a fresh process: ``pyarrow.parquet.read_table`` of the image file (what
   holding the pool costs) and reading the JSONL file with ``pyarrow.json``.
3. Each command in a fresh process, peak RSS from ``getrusage``: the same ``select --scores`` without
   a pool (kdata's fixed cost), ``kdata select --scores --pool``
   (``rad``, 10% and 50%), ``kdata inspect`` and ``kdata card`` of the 50% dataset,
   ``kdata dedup DIR --level near`` of it, and ``kdata select`` on the JSONL pool (``miniplm``, 10%).
Prints one row per command with its wall seconds, its peak RSS, and what the pool costs it: the
peak over the same ``select`` without ``--pool`` (torch, the scores, the card), as a fraction of
the pool file's size. With the default sizes (``--n``, ``--px``, ``--lines``, ``--words``) and without
``--no-write``, the table is spliced into ``docs/benchmarks/memory.md`` (``benchmarks/doc_tables.py``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import runpy
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
_READ_PARQUET = "import sys, pyarrow.parquet as pq; t = pq.read_table(sys.argv[1]); print(t.num_rows)"
_READ_JSONL = "import sys, pyarrow.json as pj; t = pj.read_json(sys.argv[1]); print(t.num_rows)"
WORDS = "alpha beta gamma delta data model teacher student token score pool shard cat dog".split()


def write_images(folder: Path, n: int, px: int) -> tuple[Path, Path]:
    """One Parquet file, one row group, of ``n`` noise PNGs; and the matching predictions file."""
    from PIL import Image

    rng = np.random.default_rng(0)
    pool, preds = folder / f"images-{n}x{px}.parquet", folder / f"preds-{n}.parquet"
    if not pool.exists():
        images = []
        for _ in range(n):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (px, px), dtype=np.uint8), "L").save(buf, "PNG", compress_level=1)
            images.append(buf.getvalue())
        labels = rng.integers(0, 10, n)
        table = pa.table({"sample_id": [f"s{i:08d}" for i in range(n)], "image": pa.array(images, pa.binary()),
                          "label": [str(v) for v in labels]})
        pq.write_table(table, str(pool) + ".tmp", row_group_size=max(n, 1))
        os.replace(str(pool) + ".tmp", pool)
        t = rng.normal(size=(n, 10)).astype(np.float32)
        t[np.arange(n), labels] += 3
        s = (t + rng.normal(scale=1.5, size=t.shape)).astype(np.float32)
        offsets = pa.array(np.arange(0, (n + 1) * 10, 10, dtype=np.int32))
        pq.write_table(pa.table({"sample_id": table.column("sample_id"),
                                 "teacher_logits": pa.ListArray.from_arrays(offsets, pa.array(t.ravel())),
                                 "student_logits": pa.ListArray.from_arrays(offsets, pa.array(s.ravel())),
                                 "label_idx": pa.array(labels)}), preds)
    return pool, preds


def write_text(folder: Path, lines: int, words: int) -> tuple[Path, Path]:
    """A JSONL text pool and its language-model predictions (per-text log-probabilities)."""
    rng = np.random.default_rng(1)
    pool, preds = folder / f"text-{lines}x{words}.jsonl", folder / f"text-preds-{lines}.parquet"
    if not pool.exists():
        with open(str(pool) + ".tmp", "w") as f:
            for i in range(lines):
                text = " ".join(WORDS[k] for k in rng.integers(0, len(WORDS), words))
                f.write(json.dumps({"sample_id": f"t{i:08d}", "text": f"{i} {text}", "domain": f"d{i % 5}"}) + "\n")
        os.replace(str(pool) + ".tmp", pool)
        pq.write_table(pa.table({"sample_id": [f"t{i:08d}" for i in range(lines)],
                                 "teacher_logprob": rng.normal(-2, 0.5, lines).astype(np.float32),
                                 "reference_logprob": rng.normal(-2.5, 0.5, lines).astype(np.float32)}), preds)
    return pool, preds


def measure(cmd: list[str], *, env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of ``cmd`` run as a child (``benchmarks/child_rss.py``)."""
    return runpy.run_path(str(Path(__file__).resolve().parent / "child_rss.py"))["measure"](cmd, env=env)


DEFAULTS = {"n": 20_000, "px": 200, "lines": 50_000, "words": 1500}


def markdown(r: dict) -> str:
    """The docs block: how it was measured (sizes, cores, versions, seconds, command) and the table."""
    table = ["| command | wall | peak RSS | peak / file size | (peak − fixed cost) / file size |",
             "|---|---:|---:|---:|---:|"]
    for label, sec, rss, ref, frac in r["rows"]:
        table.append(f"| {label} | {sec:.1f} s | {rss / 1024:.2f} GB | {rss / ref:.2f} | "
                     f"{'' if frac is None else f'{frac:.2f}'} |")
    return (f"`{r['command']}` — {r['n']:,} images of {r['px']} px in one Parquet row group ({r['gb']:.2f} GB); "
            f"{r['lines']:,} JSONL lines of {r['words']:,} words ({r['text_gb']:.2f} GB); pyarrow {pa.__version__}; "
            f"{r['cpus']} cores; {r['seconds']:.0f} s in all (writing the inputs included).\n\n" + "\n".join(table))


# long: the inputs, the baselines, then each command in turn
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20_000, help="images in the pool file")
    ap.add_argument("--px", type=int, default=200, help="image side in pixels (200: about 40 KB per PNG)")
    ap.add_argument("--lines", type=int, default=50_000, help="lines in the JSONL text pool")
    ap.add_argument("--words", type=int, default=1500, help="words per line")
    ap.add_argument("--dir", default=None, help="keep the inputs here for the next run (default: a temporary folder)")
    ap.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks/memory.md")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    folder = Path(args.dir or tempfile.mkdtemp(prefix="kdata-bench-memory-"))
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "KDATA_CACHE": str(folder / "cache")}
    pool, preds = write_images(folder, args.n, args.px)
    text, text_preds = write_text(folder, args.lines, args.words)
    kd = [sys.executable, "-m", "kdata.cli"]
    gb = pool.stat().st_size / 1e9
    print(f"# kdata memory benchmark: {args.n:,} images in one Parquet row group ({gb:.2f} GB), "
          f"{args.lines:,} JSONL lines ({text.stat().st_size / 1e9:.2f} GB); load={os.getloadavg()[0]:.1f}")
    runs = folder / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    base_s, base_rss = measure([sys.executable, "-c", _READ_PARQUET, str(pool)], env=env)
    tbase_s, tbase_rss = measure([sys.executable, "-c", _READ_JSONL, str(text)], env=env)
    size, tsize = pool.stat().st_size / 2**20, text.stat().st_size / 2**20
    sel = [*kd, "select", "--scores", str(preds), "--method", "rad"]
    tsel = [*kd, "select", "--scores", str(text_preds), "--method", "miniplm", "--budget", "0.1"]
    fixed_s, fixed = measure([*sel, "--budget", "0.1", "--out", str(runs / "nopool")], env=env)
    tfixed_s, tfixed = measure([*tsel, "--out", str(runs / "tnopool")], env=env)
    rows = [("baseline: `pyarrow.parquet.read_table` of the image file", base_s, base_rss, size, None),
            ("fixed cost: the same `kdata select --scores P` without `--pool`", fixed_s, fixed, size, None)]
    steps = [
        ("`kdata select --scores P --pool F --method rad --budget 0.1`",
         [*sel, "--pool", str(pool), "--budget", "0.1", "--out", str(runs / "b10")]),
        ("`kdata select … --budget 0.5`", [*sel, "--pool", str(pool), "--budget", "0.5", "--out", str(runs / "b50")]),
        ("`kdata inspect DIR` (the 50% dataset)", [*kd, "inspect", str(runs / "b50")]),
        ("`kdata card DIR`", [*kd, "card", str(runs / "b50")]),
        ("`kdata dedup DIR --level near`", [*kd, "dedup", str(runs / "b50"), "--level", "near", "--out", str(runs / "dd")]),
    ]
    for label, cmd in steps:
        sec, rss = measure(cmd, env=env)
        rows.append((label, sec, rss, size, None if cmd[3] in ("inspect", "card") else (rss - fixed) / size))
    rows.append(("baseline: `pyarrow.json.read_json` of the JSONL file", tbase_s, tbase_rss, tsize, None))
    rows.append(("fixed cost: `kdata select --scores P --method miniplm` without `--pool`", tfixed_s, tfixed, tsize,
                 None))
    sec, rss = measure([*tsel, "--pool", str(text), "--out", str(runs / "text")], env=env)
    rows.append(("`kdata select --scores P --pool F.jsonl --method miniplm --budget 0.1`", sec, rss, tsize,
                 (rss - tfixed) / tsize))
    given = sys.argv[1:] if argv is None else list(argv)
    if "--dir" in given:  # where the inputs are kept does not change the figures
        i = given.index("--dir")
        given = given[:i] + given[i + 2:]
    cmd = " ".join(["python benchmarks/memory.py", *given])
    md = markdown({"command": cmd, "n": args.n, "px": args.px, "gb": gb, "lines": args.lines, "words": args.words,
                   "text_gb": text.stat().st_size / 1e9, "cpus": os.cpu_count(), "rows": rows,
                   "seconds": time.perf_counter() - t_start})
    print(md)
    default = all(getattr(args, k) == v for k, v in DEFAULTS.items())
    if not args.no_write and default and \
            runpy.run_path(str(ROOT / "benchmarks" / "doc_tables.py"))["splice"]("memory", md):
        print("(written into docs/benchmarks/memory.md)")
    if not args.dir:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
