"""Image folder listing (``kdata.pools.folder_listing``): directory symlinks never move a sample to
another class nor vanish, GIF/TIFF/PGM files are images, other files are counted, and images three
levels down (Tiny-ImageNet's ``train/<wnid>/images/x.JPEG``) make an ImageFolder. Real folders,
real links, the real reader and CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from kdata.cli import main
from kdata.models.images import decode_multi
from kdata.pools.base import PoolLimits
from kdata.pools.readers import has_images
from kdata.pools.spec import open_pool
from tests.helpers.real_inputs import digits, make_image_folder, png_bytes

KEY = ((1, 32, 32), (0.5,), (0.5,), "bilinear")


def _rows(pool) -> dict[str, dict]:
    return {r["sample_id"]: r for r in pool.read_all().to_pylist()}


def _select(pool, out, *extra) -> dict:
    assert main(["select", "--pool", str(pool), "--method", "kd3", "--budget", "0.5", "--device", "cpu",
                 "--out", str(out), "--quiet", *extra]) == 0
    return {d["sample_id"]: d for d in pq.read_table(out / "decisions.parquet").to_pylist()}


@pytest.mark.parametrize("follow", [False, True])
def test_a_link_to_another_class_folder_never_moves_its_samples(tmp_path, follow):
    root = make_image_folder(tmp_path / "pool", n=40)
    os.symlink("../3", root / "0" / "alias")  # class 3 aliased inside class 0
    threes = sorted(f"3/{f}" for f in os.listdir(root / "3"))
    rows = _rows(open_pool(str(root), limits=PoolLimits(follow_symlinks=follow)))
    assert not any(s.startswith("0/alias/") for s in rows)
    assert sorted(s for s in rows if s.startswith("3/")) == threes and {rows[s]["label"] for s in threes} == {"3"}
    alias = rows["0/alias"]
    assert alias["image"] is None and alias["read_error"] == (
        "directory symlink to a folder of the pool, not followed: that folder is read under its own name (target 3)")
    assert len(rows) == 40 + 1


def test_follow_symlinks_cli_keeps_every_class_and_accounts_the_alias(tmp_path, builtin_models, capsys):
    root = make_image_folder(tmp_path / "pool", n=40)
    os.symlink("../3", root / "0" / "alias")
    dec = _select(root, tmp_path / "out", "--follow-symlinks", "--json")
    counts = json.loads(capsys.readouterr().out)["counts"]
    assert counts["n_in"] == 41 == counts["kept"] + counts["rejected"] + counts["quarantined"]
    assert dec["0/alias"]["decision"] == "quarantined" and "(target 3)" in dec["0/alias"]["error"]
    assert {d["label"] for s, d in dec.items() if s.startswith("3/")} == {"3"}
    assert sum(s.startswith("3/") for s in dec) == len(os.listdir(root / "3"))


def test_a_class_folder_linked_from_outside_is_a_quarantined_row_until_followed(tmp_path, builtin_models, capsys):
    src = make_image_folder(tmp_path / "src", n=40)
    root = tmp_path / "pool"
    root.mkdir()
    for c in ("0", "1"):
        os.rename(src / c, root / c)
    os.symlink(src / "2", root / "2")
    n_real = len(os.listdir(root / "0")) + len(os.listdir(root / "1"))
    strict = open_pool(str(root))
    rows = _rows(strict)
    assert len(rows) == n_real + 1 and "2" in strict.class_names
    assert rows["2"]["label"] == "2" and rows["2"]["read_error"] == (
        f"directory symlink outside the pool, not followed (--follow-symlinks reads it; target {src / '2'})")
    assert "1 directory symlink(s) not followed" in strict.description
    loose = _rows(open_pool(str(root), limits=PoolLimits(follow_symlinks=True)))
    assert {s for s in loose if s.startswith("2/")} == {f"2/{f}" for f in os.listdir(src / "2")}
    assert "2" not in loose and {loose[s]["label"] for s in loose if s.startswith("2/")} == {"2"}
    dec = _select(root, tmp_path / "out")
    assert len(dec) == n_real + 1 and dec["2"]["decision"] == "quarantined"
    assert "--follow-symlinks reads it" in dec["2"]["error"]


def test_a_followed_target_is_read_once_and_a_loop_inside_it_ends(tmp_path):
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "x.png").write_bytes(png_bytes(digits(1)[0][0]))
    os.symlink(ext, ext / "loop")  # a link back to its own folder
    root = tmp_path / "pool"
    root.mkdir()
    os.symlink(ext, root / "a")
    os.symlink(ext, root / "b")
    rows = _rows(open_pool(str(root), limits=PoolLimits(follow_symlinks=True)))
    assert set(rows) == {"a/x.png", "a/loop", "b"}
    assert rows["a/x.png"]["read_error"] is None and rows["a/x.png"]["label"] == "a"
    for sid in ("a/loop", "b"):
        assert rows[sid]["read_error"] == (f"directory symlink to a folder already read, not read twice "
                                           f"(target {os.path.realpath(ext)}; read as a)")
    strict = _rows(open_pool(str(root)))
    assert set(strict) == {"a", "b"} and all("not followed" in r["read_error"] for r in strict.values())


def test_gif_tiff_and_pgm_files_are_images_and_other_files_are_counted(tmp_path, builtin_models):
    root = make_image_folder(tmp_path / "pool", n=12)
    x = digits(4, offset=20)[0]
    for i, (name, fmt) in enumerate([("a.gif", "GIF"), ("b.TIF", "TIFF"), ("c.tiff", "TIFF"), ("d.PGM", "PPM")]):
        Image.fromarray(x[i]).save(root / "5" / name, format=fmt)
    (root / "notes.txt").write_text("x")
    (root / "5" / "boxes.txt").write_text("x")
    (root / "5" / "README").write_text("x")
    (root / "5" / ".DS_Store").write_text("x")  # hidden: skipped, not counted
    pool = open_pool(str(root))
    rows = _rows(pool)
    for name in ("a.gif", "b.TIF", "c.tiff", "d.PGM"):
        assert rows[f"5/{name}"]["read_error"] is None
        assert decode_multi(rows[f"5/{name}"]["image"], [KEY])[KEY].shape == (1, 32, 32)
    assert len(rows) == 12 + 4
    assert pool.extra["ignored"] == {".txt": 2, "(none)": 1}
    assert "3 file(s) ignored as not images (.txt 2, (none) 1)" in pool.description
    out = tmp_path / "out"
    dec = _select(root, out)
    assert {d["decision"] for s, d in dec.items() if s.startswith("5/") and s[2] in "abcd"} <= {"kept", "rejected"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert "file(s) ignored as not images (.txt 2, (none) 1)" in manifest["pool"]["description"]


def test_images_three_levels_down_are_an_image_folder_classed_by_the_top_folder(tmp_path):
    root = tmp_path / "tiny" / "train"
    x, y = digits(12)
    for i in range(12):
        wnid = f"n0{y[i] % 3}"
        d = root / wnid / "images"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.repeat(x[i][..., None], 3, axis=2)).save(d / f"{wnid}_{i}.JPEG", format="JPEG")
        (root / wnid / f"{wnid}_boxes.txt").write_text("0 0 8 8\n")
    assert has_images(root) and not has_images(root, depth=2)
    pool = open_pool(str(root))
    assert pool.extra["layout"] == "ImageFolder" and pool.class_names == sorted({f"n0{c % 3}" for c in y})
    rows = _rows(pool)
    assert len(rows) == 12 and all(r["label"] == s.split("/")[0] and "/images/" in s for s, r in rows.items())
    assert pool.extra["ignored"] == {".txt": len(pool.class_names)}
