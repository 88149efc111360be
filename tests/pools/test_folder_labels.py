"""ImageFolder labels: a folder name written decomposed (NFD, as macOS does) is the same class as its
composed (NFC) spelling, and a file beside the class folders is quarantined saying why instead of
joining the pool as an unlabelled sample (real files, real reader, the real CLI)."""

from __future__ import annotations

import unicodedata

import pyarrow.parquet as pq

from kdata.cli import main
from kdata.pools.readers import STRAY
from kdata.pools.spec import open_pool
from tests.helpers.real_inputs import digits, make_image_folder, png_bytes


def test_nfd_folder_names_are_nfc_labels(tmp_path):
    x, _ = digits(4)
    for i, name in enumerate(["ñandú", unicodedata.normalize("NFD", "ñandú"), "cat", "cat"]):
        d = tmp_path / "pool" / name
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i}.png").write_bytes(png_bytes(x[i]))
    pool = open_pool(str(tmp_path / "pool"))
    if len({p.name for p in (tmp_path / "pool").iterdir()}) == 3:  # the file system kept both spellings
        assert pool.class_names == ["cat", "ñandú"]
    labels = [v for u in pool.units for v in u.read_column("label").to_pylist()]
    assert set(labels) == {"cat", "ñandú"} and all(unicodedata.is_normalized("NFC", v) for v in labels)


def test_a_file_beside_the_class_folders_is_quarantined_with_the_reason(tmp_path, capsys):
    pool = make_image_folder(tmp_path / "pool", n=30)
    x, _ = digits(1)
    (pool / "stray.png").write_bytes(png_bytes(x[0]))
    out = tmp_path / "out"
    assert main(["select", "--pool", str(pool), "--method", "kd3", "--budget", "10", "--out", str(out), "--quiet"]) == 0
    dec = {r["sample_id"]: r for r in pq.read_table(out / "decisions.parquet").to_pylist()}
    assert len(dec) == 31 and dec["stray.png"]["decision"] == "quarantined" and dec["stray.png"]["error"] == STRAY
    assert all(r["label"] is not None for k, r in dec.items() if k != "stray.png")
    # a flat folder has no class folders: its files are the pool, unlabelled, as before
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.png").write_bytes(png_bytes(x[0]))
    assert open_pool(str(flat)).units[0].read().column("read_error").to_pylist() == [None]
