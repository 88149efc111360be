"""Real inputs for the pool-reader / model-file / real-scoring tests: image folders, tars, Parquet
pools made from the built-in digits, and tiny CNNs trained here for a few steps and exported.

Built once per test session (``functools.cache``) into a temporary directory.
"""

from __future__ import annotations

import functools
import io
import json
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from kdata.pools import builtin
from kdata.models.builtin import DigitsNet

CLASSES = list(builtin.CLASS_NAMES)
INPUT = (1, 32, 32)
MEAN, STD = (0.5,), (0.5,)


def png_bytes(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def digits(n: int, *, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x, y = builtin.split_arrays("test")
    return x[offset:offset + n], y[offset:offset + n]


def make_image_folder(root: Path, n: int = 40, *, corrupt: bool = False) -> Path:
    """ImageFolder of digits: POOL/<digit>/<i>.png|.jpg; with ``corrupt``: garbage, truncated, empty."""
    x, y = digits(n)
    for i in range(n):
        d = root / CLASSES[y[i]]
        d.mkdir(parents=True, exist_ok=True)
        fmt = "PNG" if i % 2 else "JPEG"
        (d / f"{i:03d}.{'png' if fmt == 'PNG' else 'jpg'}").write_bytes(png_bytes(x[i], fmt))
    if corrupt:
        (root / "3").mkdir(exist_ok=True)
        (root / "3" / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
        big = png_bytes(np.tile(x[0], (4, 4)), "JPEG")
        (root / "3" / "truncated.jpg").write_bytes(big[: len(big) // 2])
        (root / "7").mkdir(exist_ok=True)
        (root / "7" / "empty.png").write_bytes(b"")
    return root


def make_parquet_units(root: Path, *, units: int, rows: int) -> Path:
    """A pool folder of ``units`` Parquet files part-i.parquet, ``rows`` digit PNGs with labels each."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    x, y = digits(units * rows)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(units):
        pq.write_table(pa.table({"image": [png_bytes(a) for a in x[i * rows:(i + 1) * rows]],
                                 "label": [str(v) for v in y[i * rows:(i + 1) * rows]]}), root / f"part-{i}.parquet")
    return root


def make_tar(path: Path, keys_labels_images: list[tuple[str, str | None, bytes | None]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for key, label, img in keys_labels_images:
            for ext, data in (("png", img), ("cls", label.encode() if label is not None else None)):
                if data is None:
                    continue
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def train_cnn(widths, *, steps: int, seed: int, num_classes: int = 10, split: str = "train") -> DigitsNet:
    """A few AdamW steps on the built-in digits split (real training, tiny budget)."""
    torch.manual_seed(seed)
    x, y = builtin.split_arrays(split)
    x = (torch.from_numpy(x).float().div(255).unsqueeze(1) - 0.5) / 0.5
    y = torch.from_numpy(y).long() % num_classes
    net = DigitsNet(tuple(widths), num_classes=num_classes)
    opt = torch.optim.AdamW(net.parameters(), lr=5e-3)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: one thread avoids OpenMP spin contention on a busy 2-core box
    try:
        for _ in range(steps):
            idx = torch.randint(0, len(y), (32,), generator=gen)
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return net.eval()


@functools.cache
def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="kdata-real-inputs-"))


@functools.cache
def exported_models() -> dict[str, str]:
    """{'teacher_pt2', 'student_pt2', 'teacher_pt', 'student_pt', 'student4_pt2'} → paths (trained here)."""
    from kdata.models.files import export_model

    root = workdir() / "models"
    root.mkdir(exist_ok=True)
    teacher = train_cnn((8, 16, 32), steps=25, seed=1)
    student = train_cnn((4, 8, 8), steps=15, seed=2)
    student4 = train_cnn((4, 8, 8), steps=3, seed=3, num_classes=4)
    out = {}
    for name, net, kind, classes in (("teacher_pt2", teacher, "pt2", CLASSES), ("student_pt2", student, "pt2", CLASSES),
                                     ("teacher_pt", teacher, "pt", CLASSES), ("student_pt", student, "pt", CLASSES),
                                     ("student4_pt2", student4, "pt2", CLASSES[:4])):
        out[name] = str(export_model(net, root / f"{name}.{kind}", input_size=INPUT, mean=MEAN, std=STD,
                                     class_names=classes, kind=kind))
    out["_nets"] = {"teacher": teacher, "student": student}
    return out


TINY_CLIP = {"embed_dim": 24,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
             "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}


@functools.cache
def tiny_clip() -> tuple[str, str]:
    """(config .json path, random-weights checkpoint path) for a tiny open_clip model."""
    import open_clip

    root = workdir() / "clip"
    root.mkdir(exist_ok=True)
    cfg = root / "kdata-tiny-clip.json"
    cfg.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(str(cfg))
    torch.manual_seed(0)
    model = open_clip.create_model("kdata-tiny-clip", pretrained=None)
    ckpt = root / "tiny-clip.pt"
    torch.save(model.state_dict(), ckpt)
    return str(cfg), str(ckpt)
