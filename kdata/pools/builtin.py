"""The embedded default: a webly-collected-looking pool built from scikit-learn's bundled digits.

No download is needed. scikit-learn's 1,797 8×8 digits are split once (fixed seed) into
disjoint parts:

* ``train``  — 700 clean images the built-in teacher learns from (the student sees 150 of them),
* ``test``   — 400 clean images, ``builtin:digits-test``,
* ``pool``   — the remaining 697 images, the base of ``builtin:digits-web``.

``builtin:digits-web`` mixes, like data scraped from the web:

* clean in-distribution images with the right label (``clean``),
* the same kind of images with a wrong web label (``label_noise``, 25% of the base images),
* distribution shift: strongly rotated / scaled / blurred / inverted / noisy digits with the
  right label (``shift``),
* out-of-distribution junk: crops of scikit-learn's sample photographs, noise and strokes, with
  a random label (``junk``),
* near-duplicates (lightly noised or shifted copies, ``near_dup``) and byte-identical copies
  (``exact_dup``).

Images are 32×32 grayscale PNGs (8×8 digits upsampled bilinearly). The ground truth of every
sample lives in a separate table (``digits_web_truth``) that selection never reads, so benchmarks
can measure what a curation keeps.
"""

from __future__ import annotations

import gzip
import io
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image, ImageFilter

from kdata.core.errors import KdataError
from kdata.core.paths import cache_dir
from kdata.dataset.schema import POOL_SCHEMA
from kdata.pools import builtin_text  # noqa: F401  (registers builtin:text-web and builtin:text-test)
from kdata.pools.materialise import materialise as materialise_shards

SIZE = 32
CLASS_NAMES = [str(i) for i in range(10)]
POOL_VERSION = "digits-web-v1"
SPLIT_SEED = 20231
N_TRAIN, N_STUDENT, N_TEST = 700, 150, 400
N_SHIFT, N_JUNK, N_NEAR, N_EXACT = 350, 200, 150, 60
LABEL_NOISE = 0.25
SOURCES = ("site-a", "site-b", "site-c")
POOLS = ("digits-web", "digits-test")
DESCRIPTIONS = {
    "digits-web": "scikit-learn digits shaped like web data: clean, label noise, shift, junk, duplicates",
    "digits-test": "400 clean held-out scikit-learn digits",
}


def sklearn_data_file(*parts: str) -> Path:
    """A data file scikit-learn ships (``datasets/data/digits.csv.gz``, ``datasets/images/*.jpg``),
    found without importing scikit-learn: its import costs ~1.5 s of CPU, reading the file ~0.05 s."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise KdataError("the built-in digits need scikit-learn's bundled data: pip install scikit-learn")
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    # the file ``sklearn.datasets.load_digits`` reads: 1,797 rows of 64 pixels (0..16) and the label
    with gzip.open(sklearn_data_file("datasets", "data", "digits.csv.gz"), "rt") as fh:
        data = np.loadtxt(fh, delimiter=",")
    images = (data[:, :-1].reshape(-1, 8, 8) / 16.0).astype(np.float32)  # (1797, 8, 8) in [0, 1]
    target = data[:, -1].astype(np.int64)
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(target))
    splits = {
        "train": perm[:N_TRAIN],
        "test": perm[N_TRAIN:N_TRAIN + N_TEST],
        "pool": perm[N_TRAIN + N_TEST:],
    }
    splits["student"] = splits["train"][:N_STUDENT]
    return images, target, splits


def upsample(img8: np.ndarray) -> np.ndarray:
    """8×8 float [0,1] → 32×32 uint8, bilinear."""
    im = Image.fromarray(np.clip(img8 * 255.0, 0, 255).astype(np.uint8), mode="L")
    return np.asarray(im.resize((SIZE, SIZE), Image.BILINEAR))


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8), mode="L").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def split_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32) uint8 images and int64 labels of a clean split: train, student, test, pool."""
    images, target, splits = _digits()
    idx = splits[split]
    return np.stack([upsample(images[i]) for i in idx]), target[idx]


def _shift(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A strong but label-preserving distribution shift."""
    im = Image.fromarray(arr, mode="L")
    kind = rng.integers(0, 5)
    if kind == 0:  # heavy rotation
        im = im.rotate(float(rng.choice([-1, 1]) * rng.uniform(30, 50)), resample=Image.BILINEAR)
    elif kind == 1:  # shrink into a corner
        s = int(rng.integers(14, 20))
        small = im.resize((s, s), Image.BILINEAR)
        canvas = Image.new("L", (SIZE, SIZE), 0)
        canvas.paste(small, (int(rng.integers(0, SIZE - s)), int(rng.integers(0, SIZE - s))))
        im = canvas
    elif kind == 2:  # blur
        im = im.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(1.8, 2.6))))
    elif kind == 3:  # inverted contrast
        im = Image.fromarray(255 - arr, mode="L")
    out = np.asarray(im).astype(np.float32)
    if kind == 4:  # heavy noise
        out = out + rng.normal(0, 70, out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


@lru_cache(maxsize=1)
def _photos() -> np.ndarray:
    # ``sklearn.datasets.load_sample_images``'s photographs (china.jpg, flower.jpg), in its order
    files = sorted(sklearn_data_file("datasets", "images").glob("*.jpg"))
    return np.stack([np.asarray(Image.fromarray(np.asarray(Image.open(f))).convert("L")) for f in files])


def _junk(rng: np.random.Generator) -> np.ndarray:
    kind = rng.integers(0, 3)
    if kind == 0:  # a crop of a photograph
        photos = _photos()
        p = photos[rng.integers(0, len(photos))]
        s = int(rng.integers(24, 160))
        y, x = int(rng.integers(0, p.shape[0] - s)), int(rng.integers(0, p.shape[1] - s))
        return np.asarray(Image.fromarray(p[y:y + s, x:x + s]).resize((SIZE, SIZE), Image.BILINEAR))
    if kind == 1:  # smooth noise
        small = rng.uniform(0, 255, (int(rng.integers(3, 9)),) * 2).astype(np.uint8)
        return np.asarray(Image.fromarray(small, mode="L").resize((SIZE, SIZE), Image.BICUBIC))
    # random strokes
    from PIL import ImageDraw

    im = Image.new("L", (SIZE, SIZE), 0)
    d = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(2, 6))):
        d.line([tuple(rng.integers(0, SIZE, 2).tolist()), tuple(rng.integers(0, SIZE, 2).tolist())],
               fill=int(rng.integers(120, 256)), width=int(rng.integers(1, 4)))
    return np.asarray(im)


def _near_copy(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = arr.astype(np.float32)
    if rng.random() < 0.5:
        out = out + rng.normal(0, 6, out.shape)
    else:  # re-encode as a lossy JPEG and back
        buf = io.BytesIO()
        Image.fromarray(arr, mode="L").save(buf, format="JPEG", quality=int(rng.integers(70, 95)))
        out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L")).astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


@lru_cache(maxsize=4)
def _build_web(seed: int) -> tuple[pa.Table, pa.Table]:
    rng = np.random.default_rng(seed)
    base, base_y = split_arrays("pool")
    rows: list[dict] = []

    def add(arr, label, truth, true_label, dup_of=None, image=None):
        rows.append({"arr": arr, "image": image, "label": int(label), "truth": truth,
                     "true_label": int(true_label), "dup_of": dup_of})

    for arr, y in zip(base, base_y):
        if rng.random() < LABEL_NOISE:
            wrong = (int(y) + int(rng.integers(1, 10))) % 10
            add(arr, wrong, "label_noise", y)
        else:
            add(arr, y, "clean", y)
    for _ in range(N_SHIFT):
        i = int(rng.integers(0, len(base)))
        add(_shift(base[i], rng), base_y[i], "shift", base_y[i])
    for _ in range(N_JUNK):
        add(_junk(rng), int(rng.integers(0, 10)), "junk", -1)
    n_orig = len(rows)
    originals = [i for i in range(n_orig) if rows[i]["truth"] in ("clean", "label_noise")]
    for _ in range(N_NEAR):
        i = originals[int(rng.integers(0, len(originals)))]
        add(_near_copy(rows[i]["arr"], rng), rows[i]["label"], "near_dup", rows[i]["true_label"], dup_of=i)
    for _ in range(N_EXACT):
        i = originals[int(rng.integers(0, len(originals)))]
        add(rows[i]["arr"], rows[i]["label"], "exact_dup", rows[i]["true_label"], dup_of=i)

    order = rng.permutation(len(rows))
    ids = {int(old): f"digits-web/{new:05d}" for new, old in enumerate(order)}
    src_p = {"clean": [0.7, 0.25, 0.05], "label_noise": [0.3, 0.5, 0.2], "shift": [0.1, 0.4, 0.5],
             "junk": [0.05, 0.25, 0.7]}
    pool_cols = {k: [] for k in ("sample_id", "image", "label", "source", "domain")}
    truth_cols = {k: [] for k in ("sample_id", "truth", "true_label", "dup_of")}
    source_of: dict[int, str] = {}
    for old in order:
        r = rows[int(old)]
        if r["dup_of"] is not None:
            src = source_of.get(r["dup_of"]) or SOURCES[int(rng.integers(0, 3))]
        else:
            src = SOURCES[int(rng.choice(3, p=src_p[r["truth"]]))]
        source_of[int(old)] = src
        pool_cols["sample_id"].append(ids[int(old)])
        pool_cols["image"].append(png_bytes(r["arr"]))
        pool_cols["label"].append(CLASS_NAMES[r["label"]])
        pool_cols["source"].append(src)
        pool_cols["domain"].append(src)
        truth_cols["sample_id"].append(ids[int(old)])
        truth_cols["truth"].append(r["truth"])
        truth_cols["true_label"].append(r["true_label"])
        truth_cols["dup_of"].append(ids[r["dup_of"]] if r["dup_of"] is not None else None)
    n = len(order)
    pool = pa.table({
        **pool_cols,
        "text": pa.nulls(n, pa.string()),
        "parent_id": pa.nulls(n, pa.string()),
        "kind": ["original"] * n,
    }).select(POOL_SCHEMA.names).cast(POOL_SCHEMA)
    truth = pa.table(truth_cols)
    return pool, truth


def digits_web(*, seed: int = 0) -> pa.Table:
    """The ``builtin:digits-web`` pool (pool schema)."""
    return _build_web(seed)[0]


def digits_web_truth(*, seed: int = 0) -> pa.Table:
    """Ground truth for ``builtin:digits-web``: ``truth`` kind, ``true_label`` (-1 junk), ``dup_of``."""
    return _build_web(seed)[1]


def digits_test() -> pa.Table:
    """``builtin:digits-test``: 400 clean held-out digits with their true labels (pool schema)."""
    arrs, ys = split_arrays("test")
    n = len(ys)
    return pa.table({
        "sample_id": [f"digits-test/{i:05d}" for i in range(n)],
        "image": [png_bytes(a) for a in arrs],
        "text": pa.nulls(n, pa.string()),
        "label": [CLASS_NAMES[int(y)] for y in ys],
        "source": ["sklearn-digits"] * n,
        "domain": ["sklearn-digits"] * n,
        "parent_id": pa.nulls(n, pa.string()),
        "kind": ["original"] * n,
    }).cast(POOL_SCHEMA)


def materialise(name: str, *, seed: int = 0, n_units: int = 4) -> Path:
    """Write a built-in digits pool once as Parquet shards in the cache (keyed by ``POOL_VERSION``)."""
    build = (lambda: digits_web(seed=seed)) if name == "digits-web" else digits_test
    return materialise_shards(cache_dir("pools", f"{POOL_VERSION}-{name}-seed{seed}"), build,
                              n_units=n_units if name == "digits-web" else 1)
