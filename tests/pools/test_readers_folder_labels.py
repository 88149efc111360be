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


def test_a_model_whose_class_names_are_nfd_scores_an_nfc_pool(tmp_path):
    """Class names copied from NFD folder names into a sidecar: loaded as NFC, so the pool's labels match."""
    from kdata.models.files import export_model
    from kdata.models.spec import load_model
    from tests.helpers.real_inputs import INPUT, MEAN, STD, train_cnn

    nfd = [unicodedata.normalize("NFD", n) for n in ("ñandú", "über")]
    net = train_cnn((4, 8, 8), steps=1, seed=0, num_classes=2)
    spec = str(export_model(net, tmp_path / "m.pt2", input_size=INPUT, mean=MEAN, std=STD, class_names=nfd, kind="pt2"))
    assert load_model(spec).class_names == ["ñandú", "über"]
    x, _ = digits(6)
    for i in range(6):
        d = tmp_path / "pool" / ("ñandú", "über")[i % 2]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i}.png").write_bytes(png_bytes(x[i]))
    assert main(["select", "--pool", str(tmp_path / "pool"), "--teacher", spec, "--student", spec, "--method", "kd3",
                 "--budget", "3", "--out", str(tmp_path / "out"), "--quiet"]) == 0
