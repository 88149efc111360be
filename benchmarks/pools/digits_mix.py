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

``<mix>/strong`` pairs the same pool with a **stronger student**: the same architecture trained here
on 400 of the teacher's 700 images instead of 120 (about 0.9 on the test split before distillation
against digits2's 0.50), the regime where a student has less left to learn from any subset.

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
STRONG = {"widths": (8, 16, 32), "epochs": 30, "seed": 13, "rows": 400}  # digits2's student: 120 rows, 60 epochs


def out_dir(mix: str) -> Path:
    root = Path(os.environ.get("KDATA_CACHE") or Path.home() / ".cache" / "kdata")
    return root / "bench-digits-mix" / VERSION / mix


def strong_student(*, log=print) -> tuple[str, dict]:
    """(spec, info) of the stronger student (module docstring), trained once and cached."""
    from webpool import accuracy, train_net

    from kdata.core.atomic import write_json
    from kdata.models.files import export_model

    out = out_dir("strong-student")
    if not (out / "info.json").is_file():
        img = digits2.splits(np.random.default_rng(digits2.SEED))
        arrs, ys = (a[:STRONG["rows"]] for a in img["teacher"])
        net = train_net(arrs, ys, widths=STRONG["widths"], epochs=STRONG["epochs"], seed=STRONG["seed"],
                        num_classes=10, flip=False)
        export_model(net, out / "student.pt2", input_size=(1, 32, 32), mean=(0.5,), std=(0.5,), class_names=digits2.NAMES)
        write_json(out / "info.json", {**STRONG, "widths": list(STRONG["widths"]),
                                       "params": sum(p.numel() for p in net.parameters()),
                                       "test_accuracy": round(accuracy(net, *img["test"]), 4)})
        log(f"digits_mix: strong student {json.loads((out / 'info.json').read_text())}", flush=True)
    return str(out / "student.pt2"), json.loads((out / "info.json").read_text())


def build(variant: str = "junk", *, log=print) -> Bench:
    """The ``variant`` mix's pool and truth (cached), with digits2's test split and models
    (``<mix>/strong``: with the stronger student)."""
    from kdata.core.atomic import write_json, write_parquet

    variant, _, student = variant.partition("/")
    if variant not in MIXES or student not in ("", "strong"):
        raise SystemExit(f"digits_mix: unknown mix {variant!r} (one of {', '.join(MIXES)}, each with an optional /strong)")
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
    spec = d2.student
    if student:
        spec, models = strong_student(log=log)
        info, name = {**info, "models": {**info["models"], "student": models}}, f"{name} (strong student)"
    return Bench(name=name, pool=str(out / "pool.parquet"), eval=d2.eval, teacher=d2.teacher, student=spec,
                 truth=out / "truth.parquet", info=info)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    for mix in (sys.argv[1:] or MIXES):
        print(json.dumps(build(mix).info["kinds"]))
