"""Near dedup sees images as scoring does: a 16-bit PNG and its 8-bit twin, a JPEG stored sideways
with an EXIF Orientation and its upright original, are near duplicates (not a black-and-white clip,
not a rotated copy), through ``kdata select --dedup near`` on an image folder of real files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from kdata.cli import main
from kdata.dedup.faiss_dedup import NEAR_THRESHOLD
from kdata.dedup.features import image_features
from tests.models.deep_images import digits, encode, pgm16, png8, png16, stored_with_orientation, tiff_float


def test_deep_and_rotated_twins_have_the_embedding_of_their_original():
    x, _ = digits(12)
    for a in x:
        h8, v8 = image_features(png8(a))
        for deep in (png16, pgm16, tiff_float):
            h, v = image_features(deep(a))
            assert float(v @ v8) > 0.9999 and h != h8  # near: the same picture; exact: other bits (full depth)
        upright = Image.fromarray(a)
        for o in (3, 6, 8):
            h, v = image_features(stored_with_orientation(upright, o, "PNG"))
            assert h == h8 and float(v @ v8) > 0.99999  # lossless: the very same upright pixels
            _, v = image_features(stored_with_orientation(upright.convert("RGB"), o, "JPEG", quality=95))
            assert float(v @ v8) > NEAR_THRESHOLD


COPIES = {0: "16bit", 1: "16bit", 2: 6, 3: 8}  # digit → a 16-bit twin, or a JPEG with this EXIF Orientation


@pytest.fixture()
def twin_folder(tmp_path) -> tuple[Path, dict[str, str]]:
    """30 distinct digits as 8-bit PNGs in class folders, plus a 16-bit twin of two of them and an
    EXIF-rotated JPEG copy of two others: {copy: original}."""
    x, y = digits(30, offset=100)
    root, twins = tmp_path / "pool", {}
    for i, (a, lab) in enumerate(zip(x, y)):
        (root / str(lab)).mkdir(parents=True, exist_ok=True)
        (root / str(lab) / f"d{i:02d}.png").write_bytes(png8(a))
        if (c := COPIES.get(i)) is None:
            continue
        if c == "16bit":
            name, data = f"d{i:02d}_16bit.png", png16(a)
        else:
            name = f"d{i:02d}_exif{c}.jpg"
            data = stored_with_orientation(Image.fromarray(a).convert("RGB"), c, "JPEG", quality=95)
        (root / str(lab) / name).write_bytes(data)
        twins[f"{lab}/{name}"] = f"{lab}/d{i:02d}.png"
    return root, twins


def test_select_dedup_near_finds_16bit_and_exif_rotated_twins(twin_folder, tmp_path, builtin_models):
    root, twins = twin_folder
    out = tmp_path / "out"
    assert main(["select", "--pool", str(root), "--method", "random", "--budget", "1.0", "--dedup", "near",
                 "--out", str(out), "--device", "cpu", "--workers", "0", "--quiet"]) == 0
    rows = pq.read_table(out / "decisions.parquet").to_pylist()
    dup = {r["sample_id"]: r["reason"].split(":", 1)[1] for r in rows
           if (r["reason"] or "").startswith("duplicate_of:")}
    assert len(dup) == len(twins)  # one of each pair, nothing else
    for copy, original in twins.items():
        assert dup.get(copy) == original or dup.get(original) == copy, (copy, dup)
    info = json.loads((out / "manifest.json").read_text())
    assert "NaN" not in json.dumps(info)
    teacher_pred = {r["sample_id"]: r["teacher_pred"] for r in rows}
    assert all(teacher_pred[c] == teacher_pred[o] for c, o in twins.items())  # scored alike, too
