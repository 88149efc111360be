"""A second benchmark pool from real images: Debian's ``openclipart-png`` clip art, made webly collected.

    python benchmarks/pools/openclipart.py            # build (or reuse) the pool and models, print where

The clip art (public-domain PNGs rendered from SVG, filed by category folders) is fetched with
``apt-get download openclipart-png`` (131 MB) and unpacked with ``dpkg -x`` into
``$KDATA_CACHE/bench-openclipart/`` — never into the repository. Without apt or dpkg (or offline),
``build`` raises ``Unavailable`` with one line saying why, and the quality benchmark skips the pool.

Classes are nine category folders with enough images (``CLASSES``). Per class, a seeded shuffle
splits the images (each class capped at ``CAP``) into a clean held-out **test** split (22%), the
**pool base** (38%), and of the rest — the images past the cap included — up to ``TEACHER_CAP`` are
the teacher's clean training split; the student is pre-trained on ``STUDENT_PER_CLASS`` images per class of that
split, so there is something to distil. The pool mixes, as a web crawl would (fractions of the pool):

* ``clean`` — a base image with its folder's label;
* ``label_noise`` (15%) — a base image filed under a wrong folder;
* ``shift`` (15%) — a base image rendered differently, with its right label: colours inverted,
  heavy blur, rotated by 90–270°, or a small crop blown up;
* ``junk`` (15%) — out-of-class clip art from the other folders (two thirds) and noise textures
  (one third), with a random label;
* ``near_dup`` (10%) — a lightly noised, re-encoded or shifted copy of a clean or mislabelled row.

Images are ``SIZE``×``SIZE`` RGB PNGs (transparency composited on white, the drawing's bounding box
padded to a square). The pool is Parquet in kdata's pool schema, ``source`` = the row's kind (what
the precision table counts; no selection method reads it) and ``domain`` = one of three "sites"
whose mix depends on the kind (as in ``builtin:digits-web``, for domain-aware methods such as DDK).
``truth.parquet`` holds each row's kind and true label (-1 for junk).

Teacher (CNN widths ``TEACHER_WIDTHS``, ~0.2M parameters) and student (``STUDENT_WIDTHS``, ~10k) are
``kdata.models.digits_net.DigitsNet`` with three input channels, trained here (seeded, one intra-op
thread) and exported as ``.pt2`` + sidecar (``kdata.models.files.export_model``), so ``kdata select
--teacher/--student`` load them like any user model. Everything is cached under a directory named
for ``VERSION`` and the size; a finished build leaves ``info.json`` last, and a rerun reuses it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

VERSION = "openclipart-web-v1"
SIZE = 48
CLASSES = {  # class name → folders under usr/share/openclipart/png
    "animals": ["animals"], "food": ["food"], "people": ["people"], "transportation": ["transportation"],
    "flags": ["signs_and_symbols/flags"], "recreation": ["recreation"], "tools": ["tools"],
    "office": ["office"], "geography": ["geography"],
}
CAP, TEST_FRAC, BASE_FRAC = 240, 0.22, 0.38
TEACHER_CAP = 140  # teacher images per class (rendering and training time on 2 cores)
MAX_PIXELS = 4_000_000  # larger source PNGs (a few are 168 Mpx) are skipped: slow to decode
STUDENT_PER_CLASS = 12
LABEL_NOISE, SHIFT, JUNK, NEAR_DUP = 0.15, 0.15, 0.15, 0.10
TEACHER_WIDTHS, STUDENT_WIDTHS = (24, 48, 96), (8, 16, 32)
TEACHER_EPOCHS, STUDENT_EPOCHS = 30, 60
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
SEED = 20240
PNG_ROOT = Path("root/usr/share/openclipart/png")
SITES = ("site-a", "site-b", "site-c")
SITE_P = {"clean": [0.7, 0.25, 0.05], "label_noise": [0.3, 0.5, 0.2], "shift": [0.1, 0.4, 0.5],
          "junk": [0.05, 0.25, 0.7]}


class Unavailable(RuntimeError):
    """The clip art cannot be fetched here (no apt-get/dpkg, no network): the pool is skipped."""


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


def cache_root() -> Path:
    return Path(os.environ.get("KDATA_CACHE") or Path.home() / ".cache" / "kdata") / "bench-openclipart"


def fetch(root: Path) -> Path:
    """The unpacked clip-art folder, downloading and unpacking the .deb on first use."""
    png = root / PNG_ROOT
    if (root / ".unpacked").is_file():
        return png
    if not shutil.which("apt-get") or not shutil.which("dpkg"):
        raise Unavailable("openclipart pool skipped: apt-get/dpkg not found (a Debian/Ubuntu system is needed)")
    root.mkdir(parents=True, exist_ok=True)
    debs = sorted(root.glob("openclipart-png_*.deb"))
    if not debs:
        p = subprocess.run(["apt-get", "download", "openclipart-png"], cwd=root, capture_output=True, text=True)
        debs = sorted(root.glob("openclipart-png_*.deb"))
        if p.returncode != 0 or not debs:
            why = (p.stderr.strip().splitlines() or ["no .deb written"])[-1]
            raise Unavailable(f"openclipart pool skipped: apt-get download openclipart-png failed ({why})")
    shutil.rmtree(root / "root", ignore_errors=True)
    p = subprocess.run(["dpkg", "-x", str(debs[-1]), str(root / "root")], capture_output=True, text=True)
    if p.returncode != 0 or not png.is_dir():
        raise Unavailable(f"openclipart pool skipped: dpkg -x {debs[-1].name} failed ({p.stderr.strip()[:200]})")
    (root / ".unpacked").write_text(debs[-1].name + "\n")
    return png


def render(path: Path, size: int = SIZE) -> np.ndarray:
    """A clip-art PNG → (size, size, 3) uint8: alpha on white, cropped to the drawing, padded square."""
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


def small_enough(path: Path) -> bool:
    """Whether the PNG's header says at most MAX_PIXELS (the header is read, not the pixels)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.size[0] * im.size[1] <= MAX_PIXELS
    except Exception:
        return False


def files_of(png: Path, folders: list[str]) -> list[Path]:
    return sorted(f for d in folders for f in (png / d).rglob("*.png") if small_enough(f))


def junk_files(png: Path) -> list[Path]:
    """Clip art from every folder that is not a class (their subfolders excluded)."""
    used = {png / d for ds in CLASSES.values() for d in ds}
    return sorted(f for f in png.rglob("*.png") if not any(u in f.parents for u in used) and small_enough(f))


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


def texture(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
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


def splits(png: Path, rng: np.random.Generator) -> dict[str, list[tuple[Path, int]]]:
    """Per class, a seeded shuffle into test / pool base / teacher (the rest) / student (from the teacher's)."""
    out: dict[str, list] = {"test": [], "base": [], "teacher": [], "student": []}
    for ci, name in enumerate(CLASSES):
        files = files_of(png, CLASSES[name])
        if len(files) < 50:
            raise Unavailable(f"openclipart pool skipped: class {name} has only {len(files)} images in {png}")
        order = [files[i] for i in rng.permutation(len(files))]
        capped = min(len(order), CAP)
        n_test, n_base = round(capped * TEST_FRAC), round(capped * BASE_FRAC)
        out["test"] += [(f, ci) for f in order[:n_test]]
        out["base"] += [(f, ci) for f in order[n_test:n_test + n_base]]
        teacher = order[n_test + n_base:][:TEACHER_CAP]
        out["teacher"] += [(f, ci) for f in teacher]
        out["student"] += [(f, ci) for f in teacher[:STUDENT_PER_CLASS]]
    return out


def web_rows(base: list[tuple[np.ndarray, int]], junk_imgs: list[np.ndarray], rng: np.random.Generator) -> list[dict]:
    """The pool's rows (before shuffling): kinds in the module docstring's proportions."""
    n_classes = len(CLASSES)
    total = round(len(base) / (1 - SHIFT - JUNK - NEAR_DUP))
    n_noise, n_shift, n_junk, n_dup = (round(total * f) for f in (LABEL_NOISE, SHIFT, JUNK, NEAR_DUP))
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
        arr = junk_imgs[int(rng.integers(0, len(junk_imgs)))] if art else texture(rng)
        rows.append({"arr": arr, "label": int(rng.integers(0, n_classes)), "truth": "junk", "true": -1})
    originals = len(base)
    for _ in range(n_dup):
        r = rows[int(rng.integers(0, originals))]
        rows.append({"arr": near_copy(r["arr"], rng), "label": r["label"], "truth": "near_dup", "true": r["true"]})
    return rows


def pool_tables(rows: list[dict], rng: np.random.Generator, *, prefix: str):
    """(pool table in kdata's pool schema, truth table), rows in a seeded random order."""
    import pyarrow as pa

    from kdata.dataset.schema import POOL_SCHEMA

    names = list(CLASSES)
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


def to_tensor(arrs: np.ndarray):
    import torch

    x = torch.from_numpy(np.ascontiguousarray(arrs)).permute(0, 3, 1, 2).float() / 255.0
    return (x - 0.5) / 0.5


def train_net(arrs: np.ndarray, ys: np.ndarray, *, widths, epochs: int, seed: int):
    """A DigitsNet with 3 input channels, trained from scratch with flips and affine jitter (one thread)."""
    import torch
    import torch.nn.functional as F

    from kdata.models.digits_net import DigitsNet, augment, fixed_threads

    with fixed_threads(1):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        x, y = to_tensor(arrs), torch.from_numpy(ys.astype(np.int64))
        net = DigitsNet(tuple(widths), num_classes=len(CLASSES), in_ch=3)
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
                flip = torch.rand(len(idx), generator=gen) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
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


def export(net, path: Path) -> str:
    from kdata.models.files import export_model

    return str(export_model(net, path, input_size=(3, SIZE, SIZE), mean=MEAN, std=STD, class_names=list(CLASSES)))


def load_cached(out: Path) -> Bench | None:
    info_path = out / "info.json"
    if not info_path.is_file():
        return None
    info = json.loads(info_path.read_text())
    return Bench(name="openclipart", pool=str(out / "pool" / "pool.parquet"), eval=str(out / "test" / "test.parquet"),
                 teacher=str(out / "teacher.pt2"), student=str(out / "student.pt2"), truth=out / "truth.parquet",
                 info=info)


def build(*, log=print) -> Bench:
    """The pool, test split, truth and models (cached; see the module docstring). Raises ``Unavailable``."""
    out = cache_root() / f"{VERSION}-{SIZE}px"
    cached = load_cached(out)
    if cached is not None:
        return cached
    t0 = time.perf_counter()
    png = fetch(cache_root())
    rng = np.random.default_rng(SEED)
    parts = splits(png, rng)
    img = {k: (np.stack([render(f) for f, _ in v]), np.array([c for _, c in v])) for k, v in parts.items()}
    junk_pool = junk_files(png)
    junk_pick = rng.choice(len(junk_pool), size=min(300, len(junk_pool)), replace=False)
    junk_imgs = [render(junk_pool[i]) for i in junk_pick]
    log(f"openclipart: rendered {sum(len(v) for v in parts.values()) + len(junk_imgs)} images in "
        f"{time.perf_counter() - t0:.0f}s", flush=True)
    rows = web_rows(list(zip(*img["base"])), junk_imgs, rng)
    pool, truth = pool_tables(rows, rng, prefix="openclipart-web")
    test_pool, _ = pool_tables([{"arr": a, "label": int(y), "truth": "clean", "true": int(y)}
                                for a, y in zip(*img["test"])], rng, prefix="openclipart-test")
    from kdata.core.atomic import write_json, write_parquet

    write_parquet(out / "pool" / "pool.parquet", pool, row_group_size=512)
    write_parquet(out / "test" / "test.parquet", test_pool, row_group_size=512)
    write_parquet(out / "truth.parquet", truth)
    models = {}
    for name, split, widths, epochs, seed in (("teacher", "teacher", TEACHER_WIDTHS, TEACHER_EPOCHS, 1),
                                              ("student", "student", STUDENT_WIDTHS, STUDENT_EPOCHS, 2)):
        t1 = time.perf_counter()
        net = train_net(*img[split], widths=widths, epochs=epochs, seed=seed)
        export(net, out / f"{name}.pt2")
        models[name] = {"widths": list(widths), "train_rows": len(img[split][1]), "epochs": epochs,
                        "params": sum(p.numel() for p in net.parameters()),
                        "test_accuracy": round(accuracy(net, *img["test"]), 4),
                        "seconds": round(time.perf_counter() - t1, 1)}
        log(f"openclipart: {name} {models[name]}", flush=True)
    kinds = dict(zip(*np.unique(truth.column("truth").to_numpy(zero_copy_only=False), return_counts=True)))
    info = {"version": VERSION, "size": SIZE, "classes": list(CLASSES), "pool_rows": pool.num_rows,
            "test_rows": test_pool.num_rows, "kinds": {k: int(v) for k, v in kinds.items()}, "models": models,
            "deb": (cache_root() / ".unpacked").read_text().strip(), "seconds": round(time.perf_counter() - t0, 1)}
    write_json(out / "info.json", info)  # last: a build that did not finish is redone
    return load_cached(out)


def main() -> int:
    try:
        bench = build()
    except Unavailable as exc:
        print(exc)
        return 0
    print(json.dumps({**bench.info, "pool": bench.pool, "eval": bench.eval, "teacher": bench.teacher,
                      "student": bench.student}, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main())
