"""Parquet write time: kdata's dictionary choice against pyarrow's default (a dictionary on every column).

``kdata.core.atomic.write_parquet`` dictionary-encodes only flat strings, integers and booleans
(``dictionary_columns``); floats, binary payloads and lists are nearly all distinct. This times both
settings in one process on a synthetic 6,000-row scores unit (as ``score_pool`` caches one: 4-class
logits, top-k, 512-d float16 embeddings) and a 3,000-row shard of 2–40 KB image payloads, best of
``--repeat`` alternating rounds, and prints the ratio.

    python benchmarks/parquet_write.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kdata.core.atomic import dictionary_columns


def tables(seed: int = 0) -> dict[str, pa.Table]:
    rng = np.random.default_rng(seed)
    n = 6000

    def lists(values: np.ndarray, width: int, kind) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), width).cast(pa.list_(kind))

    scores = pa.table({
        "sample_id": [f"folder/class/{i:06d}.jpg" for i in range(n)],
        "label_idx": pa.array(rng.integers(0, 4, n), pa.int32()),
        "teacher_pred": pa.array(rng.integers(0, 4, n), pa.int32()),
        "agree": pa.array(rng.random(n) < 0.7),
        **{name: pa.array(rng.random(n).astype(np.float32)) for name in ("kl_ts", "teacher_conf", "student_conf")},
        "teacher_topk_prob": lists(rng.random((n, 4)).astype(np.float32), 4, pa.float32()),
        "teacher_logits": lists(rng.standard_normal((n, 4)).astype(np.float32), 4, pa.float32()),
        "embedding": lists(rng.standard_normal((n, 512)).astype(np.float16), 512, pa.float16()),
    })
    m = 3000
    shard = pa.table({"sample_id": [f"s{i}" for i in range(m)],
                      "image": pa.array([rng.bytes(int(s)) for s in rng.integers(2000, 40000, m)], pa.binary()),
                      "label": [str(i % 10) for i in range(m)],
                      "teacher_topk_prob": lists(rng.random((m, 5)).astype(np.float32), 5, pa.float32())})
    return {"scores unit (6,000 rows, 512-d embeddings)": scores, "image shard (3,000 rows)": shard}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="alternating rounds; the best of each is kept")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "t.parquet"
        for name, table in tables().items():
            best = {"all": float("inf"), "kdata": float("inf")}
            for _ in range(args.repeat):
                for setting, dictionary in (("all", True), ("kdata", dictionary_columns(table.schema))):
                    t0 = time.perf_counter()
                    pq.write_table(table, out, row_group_size=4096, compression="zstd", use_dictionary=dictionary)
                    best[setting] = min(best[setting], time.perf_counter() - t0)
            print(f"{name}: dictionary on every column {best['all']:.3f} s, on kdata's columns "
                  f"{best['kdata']:.3f} s — {best['all'] / best['kdata']:.2f}× faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
