"""How fast the text trainer turns curated LM shards into padded batches, against reading them.

    python benchmarks/text_batches.py                 # 20,000 rows, k = 16; updates docs/benchmarks/text_batches.md
    python benchmarks/text_batches.py --rows 2000 --no-write

Writes causal-LM shards in kdata's shard contract (``input_ids``, per-token ``teacher_topk_ids`` /
``teacher_topk_logprobs`` (float16), ``teacher_rest_mass``; random tokens, lengths uniform in
[16, 256], row groups of 1,000) and times, in the same process, best of ``--repeat``:

* **raw read** — ``pyarrow.parquet`` reading every row group of the same columns (the baseline);
* **epoch** — ``kdata.training.text_data.TextShards.batches``: one shuffled epoch of padded batches
  (``input_ids``, ``attention_mask``, top-k ids and log-probs, rest mass, ``valid``) as torch tensors;
  the first epoch also checks each row group's soft labels (``kdata.training.text_checks``), later
  epochs do not read them again.

It prints rows/s and tokens/s of both and the ratio epoch time / raw-read time: the cost of
shuffling, padding and building tensors on top of reading the bytes. No model runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_shards(root: Path, *, rows: int, k: int, files: int, seed: int = 0) -> int:
    """Random LM shards under ``root/data``; returns the number of tokens."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    lengths = rng.integers(16, 257, size=rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    positions = lengths - 1
    pos_off = np.concatenate([[0], np.cumsum(positions)]).astype(np.int32)
    n_pos = int(pos_off[-1])
    ids = pa.ListArray.from_arrays(offsets, pa.array(rng.integers(0, 50_000, offsets[-1], dtype=np.int32)))
    inner = np.arange(0, (n_pos + 1) * k, k, dtype=np.int32)
    topk_ids = pa.ListArray.from_arrays(pos_off, pa.ListArray.from_arrays(
        inner, pa.array(rng.integers(0, 50_000, n_pos * k, dtype=np.int32))))
    # one softmax over k + 1 outcomes per position (the trainer checks the stored top-k is one): its k
    # largest as the top-k log-probs, the last as the rest mass
    e = rng.standard_exponential((n_pos, k + 1), dtype=np.float32)
    p = -np.sort(-(e / e.sum(1, keepdims=True)), axis=1)
    lp = np.log(p[:, :k]).astype(np.float16).ravel()
    topk_lp = pa.ListArray.from_arrays(pos_off, pa.ListArray.from_arrays(inner, pa.array(lp)))
    rest = pa.ListArray.from_arrays(pos_off, pa.array(p[:, k].astype(np.float16)))
    table = pa.table({"sample_id": [f"s{i:07d}" for i in range(rows)], "input_ids": ids,
                      "teacher_topk_ids": topk_ids, "teacher_topk_logprobs": topk_lp, "teacher_rest_mass": rest,
                      "teacher_nll": pa.array(rng.uniform(1, 5, rows).astype(np.float32))})
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    step = -(-rows // files)
    for i in range(files):
        pq.write_table(table.slice(i * step, step), data / f"train-{i:05d}-of-{files:05d}.parquet",
                       row_group_size=1000)
    return int(offsets[-1])


def raw_read(shards) -> int:
    """Every row group of the shards' columns, read as Arrow (the baseline); returns rows read."""
    import pyarrow.parquet as pq

    n = 0
    for g in shards.groups:
        with pq.ParquetFile(g.path) as pf:
            n += pf.read_row_group(g.index, columns=shards.columns).num_rows
    return n


def measure(*, rows: int, k: int, files: int, batch_size: int, repeat: int) -> dict:
    import torch

    from kdata.training.text_data import TextShards

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="kdata-text-batches-") as tmp:
        tokens = write_shards(Path(tmp), rows=rows, k=k, files=files)
        shards = TextShards(Path(tmp), kind="causal_lm", batch_size=batch_size, seed=0)
        read_s, epoch_s, batches = [], [], 0
        for r in range(repeat):  # alternate, best of each (timeit's rule)
            t0 = time.perf_counter()
            assert raw_read(shards) == rows
            read_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            batches = sum(1 for _ in shards.batches(epoch=r))
            epoch_s.append(time.perf_counter() - t0)
    return {"rows": rows, "tokens": tokens, "k": k, "files": files, "batch_size": batch_size, "batches": batches,
            "raw_read_s": min(read_s), "first_epoch_s": epoch_s[0], "epoch_s": min(epoch_s[1:] or epoch_s),
            "ratio": min(epoch_s[1:] or epoch_s) / min(read_s)}


def markdown(results: list[dict], seconds: float, command: str) -> str:
    lines = [f"Measured in {seconds:.0f} s on one thread with:", "", f"    {command}", "",
             "| rows | tokens | k | batch | raw read (rows/s) | first epoch, soft labels checked (rows/s) "
             "| later epoch (rows/s) | tokens/s | later epoch / raw read |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['rows']:,} | {r['tokens']:,} | {r['k']} | {r['batch_size']} | "
                     f"{r['rows'] / r['raw_read_s']:,.0f} | {r['rows'] / r['first_epoch_s']:,.0f} | "
                     f"{r['rows'] / r['epoch_s']:,.0f} | "
                     f"{r['tokens'] / r['epoch_s']:,.0f} | {r['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--batch-sizes", default="16,64")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks/text_batches.md alone")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    results = [measure(rows=args.rows, k=args.k, files=args.files, batch_size=int(b), repeat=args.repeat)
               for b in args.batch_sizes.split(",")]
    command = "python benchmarks/text_batches.py" + "".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv))
    md = markdown(results, time.perf_counter() - t0, command)
    print(md)
    if not args.no_write:
        import runpy

        done = runpy.run_path(str(ROOT / "benchmarks" / "doc_tables.py"))["splice"]("text_batches", md)
        print("updated docs/benchmarks/text_batches.md" if done else
              "docs/benchmarks/text_batches.md has no bench markers: not updated", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
