"""``report.html`` without a browser: written by every run and by ``kdata card``, recorded in the manifest,
self-contained (no URL but data: and the card), counts equal to the manifest's, thumbnails that decode,
bounded in size, and safe with hostile sample ids. tests/e2e/test_report_html.py opens it in chromium."""

import base64
import io
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from kdata.cli import main
from kdata.core.atomic import sha256_file
from kdata.report.card import regenerate
from kdata.report.html import MAX_ROWS, PER_REASON
from kdata.report.inspect import Run, reason_group
from kdata.report.picks import report_sample

DATA = re.compile(r'<script type="application/json" id="kdata-data">(.*?)</script>', re.DOTALL)


def _data(page: str) -> dict:
    return json.loads(DATA.search(page).group(1))


def _stage_counts(page: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r'<tr data-key="([^"]+)"><td>[^<]*</td><td>(\d+)</td></tr>', page)}


def test_every_run_writes_a_self_contained_report_matching_the_manifest(demo_run):
    page = (demo_run / "report.html").read_text()
    m = json.loads((demo_run / "manifest.json").read_text())
    entry = next(f for f in m["card"]["files"] if f["path"] == "report.html")
    assert entry["sha256"] == sha256_file(demo_run / "report.html")
    # nothing to fetch: every src is a data: URI, the only link is the card, a CSP forbids the rest
    assert "default-src 'none'" in page and "<link" not in page and "http://" not in page
    assert "https://" not in page and "url(" not in page
    assert set(re.findall(r'href="([^"]*)"', page)) == {"README.md"}
    assert all(s.startswith("data:") for s in re.findall(r'src="([^"]*)"', page))
    c = m["counts"]
    stages = _stage_counts(page)
    assert {k: stages[k] for k in ("n_in", "kept", "rejected", "quarantined")} == \
        {k: c[k] for k in ("n_in", "kept", "rejected", "quarantined")}
    for reason, n in c["rejected_by_reason"].items():
        assert stages[f"reason-{reason_group(reason)}"] == n
    data = _data(page)
    assert data["groups"] == {"kept": c["kept"], **c["rejected_by_reason"]}
    by_group = Counter(r["group"] for r in data["rows"])
    assert by_group == data["shown"] == {g: min(n, PER_REASON) for g, n in data["groups"].items()}
    ranks = [r["rank"] for r in data["rows"] if r["decision"] == "kept"]
    assert ranks == sorted(ranks) and None not in ranks  # best-ranked kept first
    scores = [r["score"] for r in data["rows"] if r["decision"] == "rejected"]
    assert scores == sorted(scores)  # most clearly rejected first
    # thumbnails of kept rows (from the shards) and rejected rows (from the pool) decode as images
    assert all(r["thumb"] for r in data["rows"])
    for r in data["rows"][:: max(1, len(data["rows"]) // 20)]:
        head, b64 = r["thumb"].split(",", 1)
        assert head in ("data:image/png;base64", "data:image/jpeg;base64")
        with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
            assert max(im.size) <= 64
    assert (demo_run / "report.html").stat().st_size < 2_000_000


def test_kdata_card_rewrites_the_report_byte_identically(demo_run, tmp_path, capsys):
    out = tmp_path / demo_run.name
    shutil.copytree(demo_run, out)
    before = (out / "report.html").read_bytes()
    (out / "report.html").unlink()
    assert main(["card", str(out)]) == 0
    assert f"report {out / 'report.html'}" in capsys.readouterr().out
    assert (out / "report.html").read_bytes() == before


def _byo_run(tmp_path: Path, ids: list[str], budget: str, capsys) -> Path:
    """A bring-your-own-predictions run (no images, no models): fast."""
    rng = np.random.default_rng(0)
    n = len(ids)
    pq.write_table(pa.table({"sample_id": ids, "teacher_logits": (rng.normal(size=(n, 10)) * 3).tolist(),
                             "student_logits": rng.normal(size=(n, 10)).tolist()}), tmp_path / "preds.parquet")
    out = tmp_path / "byo"
    assert main(["select", "--scores", str(tmp_path / "preds.parquet"), "--method", "kd3", "--budget", budget,
                 "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    return out


def test_report_is_bounded(tmp_path, capsys):
    out = _byo_run(tmp_path, [f"s{i}" for i in range(3000)], "0.5", capsys)
    data = _data((out / "report.html").read_text())
    assert data["groups"] == {"kept": 1500, "kd3_over_budget": 1500}
    assert len(data["rows"]) == 2 * PER_REASON and all(r["thumb"] is None for r in data["rows"])
    assert (out / "report.html").stat().st_size < 400_000


def test_hostile_sample_ids_stay_text(tmp_path, capsys):
    ids = [f"s{i}" for i in range(40)]
    ids[0] = "</script><script>alert(1)</script>"
    ids[1] = "<img src=x onerror=alert(2)>&amp;\"'"
    out = _byo_run(tmp_path, ids, "20", capsys)
    page = (out / "report.html").read_text()
    assert page.count("</script>") == 2 and "<img" not in page and "alert(" not in page.split("<script")[0]
    assert {r["id"] for r in _data(page)["rows"]} == set(ids)  # every row shown, ids intact
    regenerate(out)
    assert (out / "report.html").read_text() == page


def test_many_reasons_share_the_row_cap():
    n_groups, per = 60, 100
    reasons = [f"filter_{g}" for g in range(n_groups) for _ in range(per)]
    dec = pa.table({"sample_id": [f"s{i}" for i in range(len(reasons))], "decision": ["rejected"] * len(reasons),
                    "reason": reasons, "teacher_pred": pa.array([0] * len(reasons), pa.int32())})
    run = Run(out=Path("."), manifest={"class_names": ["a"]}, decisions=dec, shards=None)
    rows = report_sample(run, per_group=PER_REASON, max_rows=MAX_ROWS)
    counts = Counter(r["group"] for r in rows)
    assert len(rows) <= MAX_ROWS and len(counts) == n_groups and set(counts.values()) == {MAX_ROWS // n_groups}
    assert report_sample(run, per_group=PER_REASON, max_rows=MAX_ROWS) == rows  # seeded, stable


def _uri_pixels(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("L"), dtype=int)


def test_thumbnails_show_deep_and_rotated_images_as_scoring_sees_them():
    """report.html's thumbnails and the card's thumbnail grid: a 16-bit / 32-bit / float twin looks like
    its 8-bit original (not a black-and-white clip), an EXIF-rotated JPEG like its upright original."""
    from kdata.report.card_plots import _decode
    from kdata.report.html import thumb_uri
    from tests.models.deep_images import digits, encode, pgm16, png8, png16, stored_with_orientation, tiff_float, wide

    for a in digits(6)[0]:
        for deep in (png16, pgm16, tiff_float):
            assert thumb_uri(deep(a)) == thumb_uri(png8(a))
            assert (_decode(deep(a)) == _decode(png8(a))).all()
        upright = encode(wide(a, 4), "JPEG", quality=95)
        for o in (3, 6, 8):
            rotated = stored_with_orientation(wide(a, 4), o, "JPEG", quality=95)
            ref, got = _uri_pixels(thumb_uri(upright)), _uri_pixels(thumb_uri(rotated))
            assert got.shape == ref.shape == (43, 64) and np.abs(got - ref).mean() < 2
            ref, got = _decode(upright).astype(int), _decode(rotated).astype(int)
            assert got.shape == ref.shape == (64, 96, 3) and np.abs(got - ref).mean() < 2  # a tile: 96 a side
