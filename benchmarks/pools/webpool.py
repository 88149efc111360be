"""Webly collected benchmark pools from a Debian package of PNGs (shared by ``openclipart`` and ``icons``).

A pool module is a ``Spec`` (package, PNG folder inside it, classes → folders, sizes, caps, models)
and ``build(SPEC)``. Building:

1. ``apt-get download <package>`` and ``dpkg -x`` into ``$KDATA_CACHE/bench-<name>/`` (never into the
   repository); without apt or dpkg (or offline) ``Unavailable`` is raised with one line saying why.
2. The images are listed under every root of ``Spec.roots`` (size folders, preferred first: a name
   present under several roots is taken from the first only); with ``Spec.unique`` symlinks are
   dropped and of renders identical or nearly so (``dup_rms``) only the first is kept (a render
   shared by two classes is dropped from both, junk matching a class image is dropped), so no image
   reaches two splits.
3. Per class, a seeded shuffle splits the images (capped at ``cap``) into a clean held-out **test**
   split (``test_frac``), the **pool base** (``base_frac``) and, of the rest (the images past the cap
   included), up to ``teacher_cap`` for the teacher's clean training split; the student is
   pre-trained on ``student_per_class`` images per class of that split.
4. The pool mixes, as a web crawl would (fractions of the pool): ``clean`` (a base image with its
   folder's label), ``label_noise`` (a base image filed under a wrong folder), ``shift`` (a base image
   rendered differently, right label: inverted, heavily blurred, rotated 90–270° or a small crop blown
   up), ``junk`` (images from folders that are no class — two thirds — and noise textures, with a
   random label) and ``near_dup`` (a lightly noised, re-encoded or shifted copy of a clean or
   mislabelled row).
5. Images are ``size``×``size`` RGB PNGs (transparency composited on white, the drawing's bounding box
   padded to a square). The pool is Parquet in kdata's pool schema, ``source`` = the row's kind and
   ``domain`` = one of three "sites" whose mix depends on the kind; ``truth.parquet`` holds each row's
   kind and true label (-1 for junk).
6. Teacher and student are ``kdata.models.digits_net.DigitsNet`` with three input channels, trained here
   (seeded, one intra-op thread) and exported as ``.pt2`` + sidecar, so ``kdata select
   --teacher/--student`` load them like any user model.

Everything is cached under ``<version>-<size>px``; a finished build writes ``info.json`` last, and a
rerun reuses it. The random numbers are drawn in a fixed order (splits, junk pick, pool rows, pool
order, test order): a change to that order or to the listing changes a spec's outputs, and so needs a
new ``version`` (``openclipart-web-v1`` was built before this module existed and is reproduced by it).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
SITES = ("site-a", "site-b", "site-c")
SITE_P = {"clean": [0.7, 0.25, 0.05], "label_noise": [0.3, 0.5, 0.2], "shift": [0.1, 0.4, 0.5],
          "junk": [0.05, 0.25, 0.7]}


class Unavailable(RuntimeError):
    """The package's images cannot be fetched here (no apt-get/dpkg, no network): the pool is skipped."""


@dataclass(frozen=True)
class Bench:
    """What the quality benchmark needs of a pool: specs for kdata, the ground truth, a name."""

    name: str
    pool: str
    eval: str
    teacher: str
    student: str
    truth: Path
    info: dict


@dataclass(frozen=True)
class Spec:
    """One pool: where its images come from, how they are split and which models are trained."""

    name: str  # Bench name, cache folder bench-<name>, log prefix, sample ids <name>-web/…
    package: str  # Debian package fetched with apt-get download
    png_root: str  # the PNG folder inside the unpacked package
    classes: dict[str, list[str]]  # class name → folders under each root
    version: str  # names the cache folder: a change of outputs needs a new version
    seed: int
    roots: tuple[str, ...] = (".",)  # folders under png_root (sizes), preferred first
    unique: bool = False  # drop symlinks and (near-)identical renders before splitting
    dup_rms: float = 0.0  # with unique: renders this close (RMS, 0–255) count as one image
    size: int = 48
    cap: int = 240  # images per class split into test / base; the rest may train the teacher
    test_frac: float = 0.22
    base_frac: float = 0.38
    teacher_cap: int = 140  # teacher images per class (rendering and training time on 2 cores)
    student_per_class: int = 12
    min_per_class: int = 50
    max_pixels: int = 4_000_000  # larger source PNGs are skipped: slow to decode
    junk_cap: int = 300  # out-of-class images rendered for the junk rows
    label_noise: float = 0.15
    shift: float = 0.15
    junk: float = 0.15
    near_dup: float = 0.10
    teacher_widths: tuple[int, ...] = (24, 48, 96)
    student_widths: tuple[int, ...] = (8, 16, 32)
    teacher_epochs: int = 30
    student_epochs: int = 60


def cache_root(spec: Spec) -> Path:
    return Path(os.environ.get("KDATA_CACHE") or Path.home() / ".cache" / "kdata") / f"bench-{spec.name}"


def out_dir(spec: Spec) -> Path:
    return cache_root(spec) / f"{spec.version}-{spec.size}px"


def fetch(spec: Spec, root: Path) -> Path:
    """The unpacked PNG folder, downloading and unpacking the .deb on first use."""
    png = root / "root" / spec.png_root
    if (root / ".unpacked").is_file():
        return png
    skipped = f"{spec.name} pool skipped"
    if not shutil.which("apt-get") or not shutil.which("dpkg"):
        raise Unavailable(f"{skipped}: apt-get/dpkg not found (a Debian/Ubuntu system is needed)")
    root.mkdir(parents=True, exist_ok=True)
    debs = sorted(root.glob(f"{spec.package}_*.deb"))
    if not debs:
        p = subprocess.run(["apt-get", "download", spec.package], cwd=root, capture_output=True, text=True,
                           check=False)
        debs = sorted(root.glob(f"{spec.package}_*.deb"))
        if p.returncode != 0 or not debs:
            why = (p.stderr.strip().splitlines() or ["no .deb written"])[-1]
            raise Unavailable(f"{skipped}: apt-get download {spec.package} failed ({why})")
    shutil.rmtree(root / "root", ignore_errors=True)
    p = subprocess.run(["dpkg", "-x", str(debs[-1]), str(root / "root")], capture_output=True, text=True, check=False)
    if p.returncode != 0 or not png.is_dir():
        raise Unavailable(f"{skipped}: dpkg -x {debs[-1].name} failed ({p.stderr.strip()[:200]})")
    (root / ".unpacked").write_text(debs[-1].name + "\n")
    return png


# ------------------------------------------------------------------------------------------------
# images

def render(path: Path, size: int) -> np.ndarray:
    """A PNG → (size, size, 3) uint8: alpha on white, cropped to the drawing, padded square."""
    im = Image.open(path)
    im.load()
    im = im.convert("RGBA")
    if max(im.size) > 8 * size:
        im.thumbnail((8 * size, 8 * size), Image.BILINEAR)
    white = Image.new("RGBA", im.size, (255, 255, 255, 255))
    bbox = im.getchannel("A").getbbox()
    rgb = Image.alpha_composite(white, im).convert("RGB")
    if bbox:
        rgb = rgb.crop(bbox)
    side = max(rgb.size)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(rgb, ((side - rgb.size[0]) // 2, (side - rgb.size[1]) // 2))
    return np.asarray(canvas.resize((size, size), Image.LANCZOS))


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def small_enough(path: Path, max_pixels: int) -> bool:
    """Whether the PNG's header says at most ``max_pixels`` (the header is read, not the pixels)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.size[0] * im.size[1] <= max_pixels
    except Exception:  # noqa: BLE001  (any unreadable header: the file is skipped)
        return False


def listing(spec: Spec, png: Path) -> dict[str, Path]:
    """Every usable PNG keyed by its path under its root; a key under several roots comes from the first."""
    found: dict[str, Path] = {}
    for r in spec.roots:
        for f in (png / r).rglob("*.png"):
            key = f.relative_to(png / r).as_posix()
            if key in found or (spec.unique and f.is_symlink()) or not small_enough(f, spec.max_pixels):
                continue
            found[key] = f
    return found


def class_of(spec: Spec, key: str) -> str | None:
    """The class whose folder holds ``key`` (a path under a root), or None (junk)."""
    return next((c for c, ds in spec.classes.items() if any(key.startswith(d.rstrip("/") + "/") for d in ds)),
                None)


def sources(spec: Spec, png: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """(class → its images, out-of-class images), each sorted by path; deduplicated if ``spec.unique``."""
    per_class: dict[str, list[Path]] = {c: [] for c in spec.classes}
    junk: list[Path] = []
    for key, f in listing(spec, png).items():
        c = class_of(spec, key)
        (junk if c is None else per_class[c]).append(f)
    per_class = {c: sorted(fs) for c, fs in per_class.items()}
    junk = sorted(junk)
    return drop_duplicates(per_class, junk, size=spec.size, tol=spec.dup_rms) if spec.unique else (per_class, junk)


def near_groups(arrs: np.ndarray, tol: float) -> list[int]:
    """Group ids of renders: two whose RMS pixel difference (0–255 scale) is at most ``tol`` are linked, a
    group is a connected component (``tol`` 0: identical renders). Quadratic in memory: for small pools."""
    x = arrs.reshape(len(arrs), -1).astype(np.float64)
    sq = (x * x).sum(1)
    rms = np.sqrt(np.maximum(sq[:, None] + sq[None] - 2 * x @ x.T, 0) / x.shape[1])
    parent = list(range(len(x)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    # 1e-3: above float rounding of the expansion, below one channel of one pixel off by 1 (0.012)
    for i, j in zip(*np.nonzero(np.triu(rms <= tol + 1e-3, 1))):
        parent[root(int(j))] = root(int(i))
    return [root(i) for i in range(len(x))]


def drop_duplicates(per_class: dict[str, list[Path]], junk: list[Path], *, size: int, tol: float):
    """Of each group of (near-)identical renders keep the first; drop a group shared by two classes, and junk
    grouped with a class image (a duplicate in two splits would leak test images into training)."""
    items = [(f, c) for c, fs in per_class.items() for f in fs] + [(f, None) for f in junk]
    groups = near_groups(np.stack([render(f, size) for f, _ in items]), tol)
    owners: dict[int, set[str]] = {}
    for (_, c), g in zip(items, groups):
        if c is not None:
            owners.setdefault(g, set()).add(c)
    seen: set[int] = set()

    def keep(g: int, c: str | None) -> bool:
        if g in seen or (g in owners and (c is None or len(owners[g]) > 1)):
            return False
        seen.add(g)
        return True

    kept = {f for (f, c), g in zip(items, groups) if keep(g, c)}
    return {c: [f for f in fs if f in kept] for c, fs in per_class.items()}, [f for f in junk if f in kept]


def shifted(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A strong but label-preserving change of rendering."""
    im = Image.fromarray(arr)
    kind = int(rng.integers(0, 4))
    if kind == 0:
        return 255 - arr
    if kind == 1:
        return np.asarray(im.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(2.5, 4.0)))))
    if kind == 2:
        return np.asarray(im.rotate(float(rng.uniform(90, 270)), resample=Image.BILINEAR, fillcolor=(255, 255, 255)))
    s = int(arr.shape[0] * rng.uniform(0.35, 0.55))
    y, x = (int(rng.integers(0, arr.shape[0] - s)) for _ in range(2))
    return np.asarray(im.crop((x, y, x + s, y + s)).resize(arr.shape[:2], Image.BILINEAR))


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Noise junk: smooth colour noise or random stripes."""
    if rng.random() < 0.5:
        small = rng.uniform(0, 255, (int(rng.integers(3, 10)),) * 2 + (3,)).astype(np.uint8)
        return np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC))
    period = int(rng.integers(3, 12))
    axis = np.arange(size)[:, None] if rng.random() < 0.5 else np.arange(size)[None, :]
    wave = ((axis // period) % 2).astype(np.float32) * np.ones((size, size))
    colours = rng.uniform(0, 255, (2, 3))
    return (colours[0] * wave[..., None] + colours[1] * (1 - wave[..., None])).astype(np.uint8)


def near_copy(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    kind = int(rng.integers(0, 3))
    if kind == 0:
        return np.clip(arr + rng.normal(0, 6, arr.shape), 0, 255).astype(np.uint8)
    if kind == 1:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=int(rng.integers(60, 92)))
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    dy, dx = (int(rng.integers(-2, 3)) for _ in range(2))
    return np.roll(arr, (dy, dx), axis=(0, 1))


# ------------------------------------------------------------------------------------------------
# splits and the pool

def splits(spec: Spec, per_class: dict[str, list[Path]], rng: np.random.Generator) -> dict[str, list[tuple[Path, int]]]:
    """Per class, a seeded shuffle into test / pool base / teacher (the rest) / student (from the teacher's)."""
    out: dict[str, list] = {"test": [], "base": [], "teacher": [], "student": []}
    for ci, name in enumerate(spec.classes):
        files = per_class[name]
        if len(files) < spec.min_per_class:
            raise Unavailable(f"{spec.name} pool skipped: class {name} has only {len(files)} images")
        order = [files[i] for i in rng.permutation(len(files))]
        capped = min(len(order), spec.cap)
        n_test, n_base = round(capped * spec.test_frac), round(capped * spec.base_frac)
        out["test"] += [(f, ci) for f in order[:n_test]]
        out["base"] += [(f, ci) for f in order[n_test:n_test + n_base]]
        teacher = order[n_test + n_base:][:spec.teacher_cap]
        out["teacher"] += [(f, ci) for f in teacher]
        out["student"] += [(f, ci) for f in teacher[:spec.student_per_class]]
    return out


def web_rows(spec: Spec, base: list[tuple[np.ndarray, int]], junk_imgs: list[np.ndarray],
             rng: np.random.Generator) -> list[dict]:
    """The pool's rows (before shuffling): kinds in the spec's proportions."""
    n_classes = len(spec.classes)
    total = round(len(base) / (1 - spec.shift - spec.junk - spec.near_dup))
    n_noise, n_shift, n_junk, n_dup = (round(total * f) for f in (spec.label_noise, spec.shift, spec.junk,
                                                                  spec.near_dup))
    noisy = set(rng.choice(len(base), size=n_noise, replace=False).tolist())
    rows = []
    for i, (arr, y) in enumerate(base):
        label = (y + int(rng.integers(1, n_classes))) % n_classes if i in noisy else y
        rows.append({"arr": arr, "label": label, "truth": "label_noise" if i in noisy else "clean", "true": y})
    for _ in range(n_shift):
        arr, y = base[int(rng.integers(0, len(base)))]
        rows.append({"arr": shifted(arr, rng), "label": y, "truth": "shift", "true": y})
    for j in range(n_junk):
        art = j % 3 != 2 and junk_imgs
        arr = junk_imgs[int(rng.integers(0, len(junk_imgs)))] if art else texture(rng, spec.size)
        rows.append({"arr": arr, "label": int(rng.integers(0, n_classes)), "truth": "junk", "true": -1})
    originals = len(base)
    for _ in range(n_dup):
        r = rows[int(rng.integers(0, originals))]
        rows.append({"arr": near_copy(r["arr"], rng), "label": r["label"], "truth": "near_dup", "true": r["true"]})
    return rows


def pool_tables(rows: list[dict], rng: np.random.Generator, *, prefix: str, names: list[str]):
    """(pool table in kdata's pool schema, truth table), rows in a seeded random order."""
    import pyarrow as pa

    from kdata.dataset.schema import POOL_SCHEMA

    order = rng.permutation(len(rows))
    ids = [f"{prefix}/{k:05d}" for k in range(len(rows))]
    kinds = [rows[i]["truth"] for i in order]
    dom = [SITES[int(rng.choice(3, p=SITE_P.get(k, SITE_P["clean"])))] for k in kinds]
    n = len(rows)
    pool = pa.table({
        "sample_id": ids, "image": [png_bytes(rows[i]["arr"]) for i in order], "text": pa.nulls(n, pa.string()),
        "label": [names[rows[i]["label"]] for i in order], "source": kinds, "domain": dom,
        "parent_id": pa.nulls(n, pa.string()), "kind": ["original"] * n,
    }).cast(POOL_SCHEMA)
    truth = pa.table({"sample_id": ids, "truth": kinds, "true_label": [int(rows[i]["true"]) for i in order]})
    return pool, truth


# ------------------------------------------------------------------------------------------------
# models

def to_tensor(arrs: np.ndarray):
    """(N, H, W, 3) or grayscale (N, H, W) uint8 → (N, C, H, W) in the models' range."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(arrs))
    x = (x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)).float() / 255.0
    return (x - 0.5) / 0.5


def train_net(arrs: np.ndarray, ys: np.ndarray, *, widths, epochs: int, seed: int, num_classes: int,
              flip: bool = True):
    """A DigitsNet (3 input channels, or 1 for grayscale arrays) trained from scratch with affine
    jitter and, with ``flip``, horizontal flips (one thread)."""
    import torch
    import torch.nn.functional as F

    from kdata.models.digits_net import DigitsNet, augment, fixed_threads

    with fixed_threads(1):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        x, y = to_tensor(arrs), torch.from_numpy(ys.astype(np.int64))
        net = DigitsNet(tuple(widths), num_classes=num_classes, in_ch=x.shape[1])
        batch = 64
        steps = max(1, len(y) // batch)
        opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=epochs * steps)
        net.train()
        for _ in range(epochs):
            perm = torch.randperm(len(y), generator=gen)
            for s in range(steps):
                idx = perm[s * batch:(s + 1) * batch]
                xb = augment(x[idx], gen)
                if flip:
                    flipped = torch.rand(len(idx), generator=gen) < 0.5
                    xb = torch.where(flipped[:, None, None, None], xb.flip(3), xb)
                loss = F.cross_entropy(net(xb), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
    return net.eval()


def accuracy(net, arrs: np.ndarray, ys: np.ndarray) -> float:
    import torch

    with torch.inference_mode():
        return float((net(to_tensor(arrs)).argmax(1).numpy() == ys).mean())


def export(spec: Spec, net, path: Path) -> str:
    from kdata.models.files import export_model

    return str(export_model(net, path, input_size=(3, spec.size, spec.size), mean=MEAN, std=STD,
                            class_names=list(spec.classes)))


def train_models(spec: Spec, img: dict, out: Path, *, log) -> dict:
    """Teacher and student trained on their splits, exported to ``out``; their info.json records."""
    models = {}
    for name, widths, epochs, seed in (("teacher", spec.teacher_widths, spec.teacher_epochs, 1),
                                       ("student", spec.student_widths, spec.student_epochs, 2)):
        t1 = time.perf_counter()
        net = train_net(*img[name], widths=widths, epochs=epochs, seed=seed, num_classes=len(spec.classes))
        export(spec, net, out / f"{name}.pt2")
        models[name] = {"widths": list(widths), "train_rows": len(img[name][1]), "epochs": epochs,
                        "params": sum(p.numel() for p in net.parameters()),
                        "test_accuracy": round(accuracy(net, *img["test"]), 4),
                        "seconds": round(time.perf_counter() - t1, 1)}
        log(f"{spec.name}: {name} {models[name]}", flush=True)
    return models


# ------------------------------------------------------------------------------------------------
# build

def load_cached(spec: Spec, out: Path) -> Bench | None:
    info_path = out / "info.json"
    if not info_path.is_file():
        return None
    info = json.loads(info_path.read_text())
    return Bench(name=spec.name, pool=str(out / "pool" / "pool.parquet"), eval=str(out / "test" / "test.parquet"),
                 teacher=str(out / "teacher.pt2"), student=str(out / "student.pt2"), truth=out / "truth.parquet",
                 info=info)


def build(spec: Spec, *, log=print) -> Bench:
    """The pool, test split, truth and models (cached; see the module docstring). Raises ``Unavailable``."""
    out = out_dir(spec)
    cached = load_cached(spec, out)
    if cached is not None:
        return cached
    t0 = time.perf_counter()
    png = fetch(spec, cache_root(spec))
    per_class, junk_pool = sources(spec, png)
    rng = np.random.default_rng(spec.seed)
    parts = splits(spec, per_class, rng)
    img = {k: (np.stack([render(f, spec.size) for f, _ in v]), np.array([c for _, c in v])) for k, v in parts.items()}
    junk_pick = rng.choice(len(junk_pool), size=min(spec.junk_cap, len(junk_pool)), replace=False)
    junk_imgs = [render(junk_pool[i], spec.size) for i in junk_pick]
    log(f"{spec.name}: rendered {sum(len(v) for v in parts.values()) + len(junk_imgs)} images in "
        f"{time.perf_counter() - t0:.0f}s", flush=True)
    rows = web_rows(spec, list(zip(*img["base"])), junk_imgs, rng)
    names = list(spec.classes)
    pool, truth = pool_tables(rows, rng, prefix=f"{spec.name}-web", names=names)
    test_pool, _ = pool_tables([{"arr": a, "label": int(y), "truth": "clean", "true": int(y)}
                                for a, y in zip(*img["test"])], rng, prefix=f"{spec.name}-test", names=names)
    from kdata.core.atomic import write_json, write_parquet

    write_parquet(out / "pool" / "pool.parquet", pool, row_group_size=512)
    write_parquet(out / "test" / "test.parquet", test_pool, row_group_size=512)
    write_parquet(out / "truth.parquet", truth)
    models = train_models(spec, img, out, log=log)
    kinds = dict(zip(*np.unique(truth.column("truth").to_numpy(zero_copy_only=False), return_counts=True)))
    info = {"version": spec.version, "size": spec.size, "classes": names, "pool_rows": pool.num_rows,
            "test_rows": test_pool.num_rows, "kinds": {k: int(v) for k, v in kinds.items()}, "models": models,
            "source_images": {**{c: len(fs) for c, fs in per_class.items()}, "junk": len(junk_pool)},
            "deb": (cache_root(spec) / ".unpacked").read_text().strip(),
            "seconds": round(time.perf_counter() - t0, 1)}
    write_json(out / "info.json", info)  # last: a build that did not finish is redone
    return load_cached(spec, out)


def main(spec: Spec) -> int:
    """Build (or reuse) the pool and print where it is; a pool that cannot be built here prints why."""
    try:
        bench = build(spec)
    except Unavailable as exc:
        print(exc)
        return 0
    print(json.dumps({**bench.info, "pool": bench.pool, "eval": bench.eval, "teacher": bench.teacher,
                      "student": bench.student}, indent=1))
    return 0
