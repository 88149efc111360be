"""A second digits pool, generated apart from ``builtin:digits-web``: a check that the default recipe
was not fitted to the built-in pool.

scikit-learn's 1,797 digits are split again with another seed (teacher's 700 / test 400 / pool base
697, none shared with another split) and made into a web-like pool with the same *kinds* of noise as
``builtin:digits-web`` (``kdata.pools.builtin``'s generators: wrong labels, rotated / shrunk /
blurred / inverted / noisy digits with their right label, photo crops, noise and strokes with a random
label, near and exact copies) in **other proportions**: 18% of the base images mislabelled (built-in:
25%), 160 shifted rows (350), 260 junk rows (200), 110 near and 30 exact duplicates (150, 60).
Teacher and student are trained here (``webpool.train_net``, no flips), not shipped: a ``DigitsNet``
of other widths and schedule than the built-in pair (teacher 24-48-96, 30 epochs on the 700; student 8-16-32, 60 epochs on 120 of
them), exported as ``.pt2`` + sidecar, so ``kdata select --teacher/--student`` load them like any
user model. Cached under ``$KDATA_CACHE/bench-digits2/<version>/``; ``info.json`` is written last.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from webpool import SITE_P, SITES, Bench, accuracy, train_net  # noqa: E402

VERSION = "digits2-v1"
SEED = 90210
N_TRAIN, N_STUDENT, N_TEST = 700, 120, 400
LABEL_NOISE, N_SHIFT, N_JUNK, N_NEAR, N_EXACT = 0.18, 160, 260, 110, 30
TEACHER = {"widths": (24, 48, 96), "epochs": 30, "seed": 11}
STUDENT = {"widths": (8, 16, 32), "epochs": 60, "seed": 12}
NAMES = [str(i) for i in range(10)]


def out_dir() -> Path:
    return Path(os.environ.get("KDATA_CACHE") or Path.home() / ".cache" / "kdata") / "bench-digits2" / VERSION


def splits(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Clean 32×32 uint8 splits of scikit-learn's digits, drawn with this pool's own seed."""
    from kdata.pools.builtin import _digits, upsample

    images, target, _ = _digits()
    perm = rng.permutation(len(target))
    idx = {"teacher": perm[:N_TRAIN], "test": perm[N_TRAIN:N_TRAIN + N_TEST], "base": perm[N_TRAIN + N_TEST:]}
    idx["student"] = idx["teacher"][:N_STUDENT]
    return {k: (np.stack([upsample(images[i]) for i in v]), target[v]) for k, v in idx.items()}


def web_rows(base: tuple[np.ndarray, np.ndarray], rng: np.random.Generator, *, label_noise: float = LABEL_NOISE,
             n_shift: int = N_SHIFT, n_junk: int = N_JUNK, n_near: int = N_NEAR, n_exact: int = N_EXACT,
             copy_from: int | None = None) -> list[dict]:
    """The web-like rows: every base image (a share ``label_noise`` of them with a wrong label), then
    shifted, junk, near- and exact-duplicate rows; copies are drawn from the first ``copy_from`` base
    rows (all of them by default)."""
    from kdata.pools.builtin import _junk, _near_copy, _shift

    rows = []
    for arr, y in zip(*base):
        wrong = rng.random() < label_noise
        label = (int(y) + int(rng.integers(1, 10))) % 10 if wrong else int(y)
        rows.append({"arr": arr, "label": label, "truth": "label_noise" if wrong else "clean", "true": int(y)})
    for _ in range(n_shift):
        i = int(rng.integers(0, len(base[1])))
        rows.append({"arr": _shift(base[0][i], rng), "label": int(base[1][i]), "truth": "shift", "true": int(base[1][i])})
    for _ in range(n_junk):
        rows.append({"arr": _junk(rng), "label": int(rng.integers(0, 10)), "truth": "junk", "true": -1})
    originals = len(base[1]) if copy_from is None else min(copy_from, len(base[1]))
    for kind, n in (("near_dup", n_near), ("exact_dup", n_exact)):
        for _ in range(n):
            r = rows[int(rng.integers(0, originals))]
            arr = _near_copy(r["arr"], rng) if kind == "near_dup" else r["arr"]
            rows.append({"arr": arr, "label": r["label"], "truth": kind, "true": r["true"]})
    return rows


def tables(rows: list[dict], rng: np.random.Generator, *, prefix: str):
    """(pool table in kdata's pool schema, truth table), rows in a seeded random order."""
    import pyarrow as pa

    from kdata.dataset.schema import POOL_SCHEMA
    from kdata.pools.builtin import png_bytes

    order = rng.permutation(len(rows))
    ids = [f"{prefix}/{k:05d}" for k in range(len(rows))]
    kinds = [rows[i]["truth"] for i in order]
    n = len(rows)
    pool = pa.table({
        "sample_id": ids, "image": [png_bytes(rows[i]["arr"]) for i in order], "text": pa.nulls(n, pa.string()),
        "label": [NAMES[rows[i]["label"]] for i in order], "source": kinds,
        "domain": [SITES[int(rng.choice(3, p=SITE_P.get(k, SITE_P["clean"])))] for k in kinds],
        "parent_id": pa.nulls(n, pa.string()), "kind": ["original"] * n,
    }).cast(POOL_SCHEMA)
    truth = pa.table({"sample_id": ids, "truth": kinds, "true_label": [int(rows[i]["true"]) for i in order]})
    return pool, truth


def bench(out: Path, info: dict) -> Bench:
    return Bench(name="digits2", pool=str(out / "pool.parquet"), eval=str(out / "test.parquet"),
                 teacher=str(out / "teacher.pt2"), student=str(out / "student.pt2"), truth=out / "truth.parquet",
                 info=info)


def build(*, log=print) -> Bench:
    """The pool, test split, truth and models (cached; see the module docstring)."""
    from kdata.core.atomic import write_json, write_parquet
    from kdata.models.files import export_model

    out = out_dir()
    if (out / "info.json").is_file():
        return bench(out, json.loads((out / "info.json").read_text()))
    t0 = time.perf_counter()
    rng = np.random.default_rng(SEED)
    img = splits(rng)
    pool, truth = tables(web_rows(img["base"], rng), rng, prefix="digits2-web")
    test, _ = tables([{"arr": a, "label": int(y), "truth": "clean", "true": int(y)} for a, y in zip(*img["test"])],
                     rng, prefix="digits2-test")
    write_parquet(out / "pool.parquet", pool, row_group_size=512)
    write_parquet(out / "test.parquet", test, row_group_size=512)
    write_parquet(out / "truth.parquet", truth)
    models = {}
    for name, cfg in (("teacher", TEACHER), ("student", STUDENT)):
        net = train_net(*img[name], widths=cfg["widths"], epochs=cfg["epochs"], seed=cfg["seed"], num_classes=10,
                        flip=False)  # a flipped digit is another digit
        export_model(net, out / f"{name}.pt2", input_size=(1, 32, 32), mean=(0.5,), std=(0.5,), class_names=NAMES)
        models[name] = {**cfg, "widths": list(cfg["widths"]), "train_rows": len(img[name][1]),
                        "params": sum(p.numel() for p in net.parameters()),
                        "test_accuracy": round(accuracy(net, *img["test"]), 4)}
        log(f"digits2: {name} {models[name]}", flush=True)
    kinds = dict(zip(*np.unique(truth.column("truth").to_numpy(zero_copy_only=False), return_counts=True)))
    info = {"version": VERSION, "classes": NAMES, "pool_rows": pool.num_rows, "test_rows": test.num_rows,
            "kinds": {k: int(v) for k, v in kinds.items()}, "models": models,
            "seconds": round(time.perf_counter() - t0, 1)}
    write_json(out / "info.json", info)  # last: a build that did not finish is redone
    return bench(out, info)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    print(json.dumps({**build().info}, indent=1))
