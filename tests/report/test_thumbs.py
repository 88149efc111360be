"""Thumbnails for the card's grid and report.html (``kdata.report.thumbs``): an image over scoring's pixel
cap is refused from its header (a placeholder, no crash, no full decode), a JPEG is decoded at a reduced
scale, and a quarantined row's error is on the report page. Memory is measured in a fresh process
(``VmHWM``, as tests/helpers/peak_memory.py does), on a real run and real files."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from kdata.report.thumbs import pixel_cap, thumbnail
from tests.report.messy_pool import MAX_PIXELS, messy_run, png_of_zeros

BOMB = (9000, 9000)  # 81 megapixels: over the 64-megapixel default cap, under PIL's own limit (~89)

PEAK = """
import json, sys
from pathlib import Path
from kdata.report.card_plots import fetch_payloads, thumbnail_blocks, thumbnail_grid
from kdata.report.html import render_report, report_rows, thumb_uri
from kdata.report.inspect import load_run
from kdata.report.thumbs import thumbnail
def hwm():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
out, bomb, jpeg = Path(sys.argv[1]), Path(sys.argv[2]).read_bytes(), Path(sys.argv[3]).read_bytes()
run = load_run(out)
blocks, rows = thumbnail_blocks(run), report_rows(run)
ids = [r["sample_id"] for _, b, _ in blocks for r in b]
images, note = fetch_payloads(run, ids + [r["id"] for r in rows])
victim = blocks[0][1][0]["sample_id"]  # the best-ranked kept row gets the bomb's bytes
images[victim] = bomb
thumbnail(images[ids[1]], 64)  # imports and first-call costs before the baseline
res, before = {}, hwm()
res["jpeg_size"] = list(thumbnail(jpeg, 64).size)
res["jpeg_mib"] = (hwm() - before) / 1024
before = hwm()
res["bomb_thumbnail"] = thumbnail(bomb, 64) is None and thumb_uri(bomb) is None
res["grid"] = thumbnail_grid(run, out / "grid.png", blocks=blocks, images=images, note=note)[0]
page = render_report(run, name="x", rows=rows, images=images)
res["bomb_mib"] = (hwm() - before) / 1024
res["victim"], res["page"] = victim, page
print(json.dumps(res))
"""


@pytest.fixture(scope="module")
def messy(tmp_path_factory, builtin_models):
    return messy_run(tmp_path_factory.mktemp("messy-report"))


def test_an_image_over_the_cap_gets_a_placeholder_without_a_full_decode(messy, tmp_path):
    out, _, _ = messy
    bomb, jpeg = tmp_path / "bomb.png", tmp_path / "big.jpg"
    bomb.write_bytes(png_of_zeros(*BOMB))
    rng = np.random.default_rng(0)
    big = rng.integers(0, 255, (3000, 4000, 3), dtype=np.uint8)  # 12 MP: 36 MiB once fully decoded
    Image.fromarray(big).save(jpeg, quality=90)
    p = subprocess.run([sys.executable, "-c", PEAK, str(out), str(bomb), str(jpeg)], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["bomb_thumbnail"] and res["grid"]  # refused: no thumbnail, and the grid is still drawn
    # decoding it would have cost 81 MiB (grey) and 243 MiB more (the RGB tile); a header read costs nothing
    assert res["bomb_mib"] < 40, res["bomb_mib"]
    data = json.loads(re.search(r'id="kdata-data">(.*?)</script>', res["page"], re.DOTALL).group(1))
    tiles = {r["id"]: r for r in data["rows"]}
    assert tiles[res["victim"]]["thumb"] is None  # every kept row is sampled (67 < 200): its tile says "no image"
    assert sum(r["thumb"] is not None for r in data["rows"]) > 50  # the others are pictured
    assert res["jpeg_size"] == [64, 48] and res["jpeg_mib"] < 20, res  # decoded at 1/8 scale (draft)
    assert Image.open(out / "grid.png").size[0] > 0


def test_the_cap_is_scorings_or_the_runs_lower_one(messy):
    out, _, _ = messy
    manifest = json.loads((out / "manifest.json").read_text())
    assert pixel_cap(manifest) == MAX_PIXELS == 2000
    small, large = png_of_zeros(40, 40), png_of_zeros(50, 50)  # 1,600 and 2,500 pixels
    assert thumbnail(small, 64, max_pixels=MAX_PIXELS).size == (40, 40)
    assert thumbnail(large, 64, max_pixels=MAX_PIXELS) is None and thumbnail(large, 64).size == (50, 50)
    bomb = png_of_zeros(*BOMB)
    assert thumbnail(bomb, 64, max_pixels=10 ** 12) is None  # a manifest cannot raise it above the default
    assert pixel_cap({"config": {"max_pixels": "9"}}) is None and pixel_cap({"config": {"max_pixels": True}}) is None
    for junk in (None, b"", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b"x"):
        assert thumbnail(junk, 64) is None


def test_report_tiles_of_quarantined_rows_carry_their_error(messy):
    """report.html: a quarantined row's tile has its error from decisions.parquet (it showed only
    ``unreadable``); the page writes it with textContent like every other string."""
    out, bad, _ = messy
    page = (out / "report.html").read_text()
    data = json.loads(re.search(r'id="kdata-data">(.*?)</script>', page, re.DOTALL).group(1))
    dec = pq.read_table(out / "decisions.parquet")
    q = dec.filter(pc.equal(dec.column("decision"), "quarantined")).to_pylist()
    errors = {r["sample_id"]: r["error"] for r in q}
    tiles = [r for r in data["rows"] if r["decision"] == "quarantined"]
    assert {r["id"] for r in tiles} == set(errors) == set(bad)
    assert all(r["error"] == errors[r["id"]] and r["error"] for r in tiles)
    assert all(r["error"] is None for r in data["rows"] if r["decision"] != "quarantined")
    assert 'text(cap, "div", "error: " + r.error)' in page and "innerHTML" not in page
