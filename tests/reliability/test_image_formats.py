"""Payload bytes are opened only as image formats that run no program: an EPS file named ``.png``
(Pillow picks its plugin from the bytes, and its EPS plugin runs Ghostscript) is quarantined with
the reason by scoring, and shown as nothing by dedup, thumbnails and card plots — the interpreter
never starts. A fake ``gs`` on PATH records any start."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from kdata.cli import main
from kdata.dedup.features import image_features
from kdata.models.images import decode_image
from kdata.models.pixels import NOT_READABLE, READABLE_FORMATS, open_image
from kdata.report.card_plots import _decode as card_tile
from kdata.report.html import thumb_uri
from tests.helpers.real_inputs import digits, make_image_folder, png_bytes

EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n%%EndComments\n"
       b"newpath 0 0 moveto 32 32 lineto stroke\nshowpage\n%%EOF\n")


@pytest.fixture
def fake_gs(tmp_path, monkeypatch) -> Path:
    """A ``gs`` first on PATH that answers ``--version`` and writes a mark for any other call."""
    mark = tmp_path / "gs-ran"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gs = bin_dir / "gs"
    gs.write_text(f'#!/bin/sh\nif [ "$1" = "--version" ]; then echo 10.02.1; exit 0; fi\necho "$*" >> {mark}\nexit 1\n')
    gs.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path('/usr/bin')}:{Path('/bin')}:" + __import__("os").environ["PATH"])
    return mark


def test_the_attack_is_real_against_a_bare_pillow_open(fake_gs):
    import io

    from PIL import Image

    with pytest.raises(Exception), Image.open(io.BytesIO(EPS)) as im:  # Pillow's default: every plugin
        im.load()  # fails only because this gs is fake
    assert fake_gs.exists()


def test_every_decoder_refuses_postscript_without_starting_ghostscript(fake_gs):
    with pytest.raises(ValueError, match="not an image in a format kdata reads"):
        decode_image(EPS, input_size=(1, 8, 8), mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError, match="not an image in a format kdata reads"):
        open_image(EPS)
    _, vec = image_features(EPS)
    assert vec is not None and not vec.any()  # undecodable: a zero vector, as for any broken file
    assert thumb_uri(EPS) is None and card_tile(EPS) is None
    assert not fake_gs.exists()
    png = png_bytes(digits(1)[0][0])
    assert open_image(png).format in READABLE_FORMATS and thumb_uri(png) is not None  # real images still open


def test_a_postscript_file_in_a_pool_is_quarantined_with_the_reason(tmp_path, fake_gs, builtin_models, capsys):
    root = make_image_folder(tmp_path / "pool", n=12)
    (root / "3" / "evil.png").write_bytes(EPS)
    code = main(["select", "--pool", str(root), "--method", "kd3", "--budget", "5", "--device", "cpu",
                 "--out", str(tmp_path / "out"), "--json", "--quiet"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["counts"]["quarantined"] == 1
    dec = {d["sample_id"]: d for d in pq.read_table(tmp_path / "out" / "decisions.parquet").to_pylist()}
    assert dec["3/evil.png"]["decision"] == "quarantined" and NOT_READABLE in dec["3/evil.png"]["error"]
    assert main(["card", str(tmp_path / "out")]) == 0  # thumbnails and plots read the pool back too
    assert not fake_gs.exists()
