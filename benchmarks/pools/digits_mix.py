"""Digits pools with other noise mixes: does the default recipe hold when one kind of noise dominates?

The quality pools each mix junk, shifted, mislabelled and duplicate rows in one proportion. A pool a
user brings may be mostly one kind. Each pool here is ``digits2``'s base images (the same split, the
same teacher, student and test split: ``benchmarks/pools/digits2.py``) made web-like again with its
generators, the mix below changed (counts of added rows; the base is 697 images):

========  ===========  =======  =====  ==========  ===========  =================================
mix       wrong labels  shifted  junk   near dups   exact dups   what it asks
========  ===========  =======  =====  ==========  ===========  =================================
junk      5%           60       600    110         30           ~40% junk: cut it, keep the rest
shift     5%           600      60     110         30           ~40% shifted rows with right labels
labels    40%          60       60     110         30           ~30% wrong labels, little else
light     4%           30       30     110         30           ~8% noise: little to gain, much to lose
dups      10%          100      100    600         200          ~50% copies of 80 images (SemDeDup)
========  ===========  =======  =====  ==========  ===========  =================================

Cached under ``$KDATA_CACHE/bench-digits-mix/<version>/<mix>/``; ``info.json`` is written last.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import digits2  # noqa: E402
from webpool import Bench  # noqa: E402

VERSION = "digits-mix-v1"
MIXES = {
    "junk": {"label_noise": 0.05, "n_shift": 60, "n_junk": 600, "n_near": 110, "n_exact": 30},
    "shift": {"label_noise": 0.05, "n_shift": 600, "n_junk": 60, "n_near": 110, "n_exact": 30},
    "labels": {"label_noise": 0.40, "n_shift": 60, "n_junk": 60, "n_near": 110, "n_exact": 30},
    "light": {"label_noise": 0.04, "n_shift": 30, "n_junk": 30, "n_near": 110, "n_exact": 30},
    "dups": {"label_noise": 0.10, "n_shift": 100, "n_junk": 100, "n_near": 600, "n_exact": 200, "copy_from": 80},
}
SEEDS = {name: 4100 + i for i, name in enumerate(MIXES)}


def out_dir(mix: str) -> Path:
    root = Path(os.environ.get("KDATA_CACHE") or Path.home() / ".cache" / "kdata")
    return root / "bench-digits-mix" / VERSION / mix


def build(variant: str = "junk", *, log=print) -> Bench:
    """The ``variant`` mix's pool and truth (cached), with digits2's test split and models."""
    from kdata.core.atomic import write_json, write_parquet

    if variant not in MIXES:
        raise SystemExit(f"digits_mix: unknown mix {variant!r} (one of {', '.join(MIXES)})")
    d2 = digits2.build(log=log)  # the split, the models and the test split are digits2's
    out = out_dir(variant)
    name = f"mix-{variant}"
    info_path = out / "info.json"
    if not info_path.is_file():
        t0 = time.perf_counter()
        img = digits2.splits(np.random.default_rng(digits2.SEED))  # the same draws as digits2's build
        rng = np.random.default_rng(SEEDS[variant])
        pool, truth = digits2.tables(digits2.web_rows(img["base"], rng, **MIXES[variant]), rng,
                                     prefix=f"digits-mix-{variant}")
        write_parquet(out / "pool.parquet", pool, row_group_size=512)
        write_parquet(out / "truth.parquet", truth)
        kinds = dict(zip(*np.unique(truth.column("truth").to_numpy(zero_copy_only=False), return_counts=True)))
        write_json(info_path, {"version": VERSION, "mix": variant, "generator": MIXES[variant],
                               "pool_rows": pool.num_rows, "kinds": {k: int(v) for k, v in kinds.items()},
                               "models": d2.info["models"], "seconds": round(time.perf_counter() - t0, 1)})
        log(f"digits_mix: built {name} ({pool.num_rows} rows)", flush=True)
    info = json.loads(info_path.read_text())
    return Bench(name=name, pool=str(out / "pool.parquet"), eval=d2.eval, teacher=d2.teacher, student=d2.student,
                 truth=out / "truth.parquet", info=info)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    for mix in (sys.argv[1:] or MIXES):
        print(json.dumps(build(mix).info["kinds"]))
