"""A budget larger than the pool and a sample id repeated in it are refused from the pool's ids alone
(``kdata.pipeline.pool_checks``), before any model is loaded or unit scored."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdata.cli import main
from kdata.core.errors import KdataError
from kdata.pipeline.pool_checks import check_budget_fits, check_unique_pool_ids, id_hashes
from kdata.pools.spec import open_pool
from tests.helpers.real_inputs import CLASSES, digits, make_tar, png_bytes


def _parquet(path: Path, ids: list[str] | None, n: int = 12) -> Path:
    x, y = digits(n)
    cols = {"image": [png_bytes(a) for a in x], "label": [CLASSES[v] for v in y]}
    if ids is not None:
        cols = {"sample_id": ids, **cols}
    pq.write_table(pa.table(cols), path)
    return path


def _tars(root: Path, keys_a: list[str], keys_b: list[str]) -> Path:
    root.mkdir()
    x, y = digits(len(keys_a) + len(keys_b))
    samples = [(k, CLASSES[y[i]], png_bytes(x[i])) for i, k in enumerate(keys_a + keys_b)]
    make_tar(root / "a.tar", samples[:len(keys_a)])
    make_tar(root / "b.tar", samples[len(keys_a):])
    return root


@contextmanager
def _fresh_cache(cache: Path):
    saved = os.environ.get("KDATA_CACHE")
    os.environ["KDATA_CACHE"] = str(cache)
    try:
        yield cache
    finally:
        if saved is None:
            os.environ.pop("KDATA_CACHE")
        else:
            os.environ["KDATA_CACHE"] = saved


def _select_fails_before_any_work(tmp_path, capsys, pool: Path, *args) -> str:
    """``kdata select`` on ``pool`` with a fresh cache: exit 2, one line; no model trained or loaded
    (the built-in models would be trained into the cache), no unit scored, nothing written."""
    out = tmp_path / "out"
    with _fresh_cache(tmp_path / "cache") as cache:
        code = main(["select", "--pool", str(pool), "--method", "kd3", "--out", str(out), "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("kdata: error: "), err
    assert not (cache / "scores").exists() and not (cache / "models").exists()
    assert not out.exists()
    return err


def test_unique_ids_give_the_row_count(tmp_path):
    assert check_unique_pool_ids(open_pool(str(_parquet(tmp_path / "p.parquet", [f"s{i}" for i in range(12)])))) == 12
    # no sample_id column: ids are FILE:ROW, unique
    assert check_unique_pool_ids(open_pool(str(_parquet(tmp_path / "noid.parquet", None, n=7)))) == 7
    assert check_unique_pool_ids(open_pool(str(_tars(tmp_path / "wds", ["k0", "k1"], ["k2", "k3", "k4"])))) == 5


def test_an_id_repeated_in_one_file_names_the_file(tmp_path):
    ids = [f"s{i}" for i in range(12)]
    ids[9] = "s3"
    with pytest.raises(KdataError, match=r"dup\.parquet: sample_id 's3' occurs more than once in the pool "
                                         r"\(in dup\.parquet\)") as exc:
        check_unique_pool_ids(open_pool(str(_parquet(tmp_path / "dup.parquet", ids))))
    assert "\n" not in str(exc.value)


def test_a_key_repeated_across_tar_shards_names_both(tmp_path):
    pool = open_pool(str(_tars(tmp_path / "wds", ["k0", "k1", "k2"], ["k3", "k1"])))
    with pytest.raises(KdataError, match=r"sample_id 'k1' occurs more than once in the pool \(in a\.tar and b\.tar\)"):
        check_unique_pool_ids(pool)


def test_id_hashes_are_64_bit_and_equal_for_equal_ids_across_chunks():
    ids = pa.array([f"id{i % 1000}" for i in range(3000)], pa.string())
    h = id_hashes(ids)
    assert h.dtype == np.uint64 and len(h) == 3000
    assert (h[:1000] == h[1000:2000]).all() and len(np.unique(h)) == 1000
    assert id_hashes(pa.array([], pa.string())).size == 0


def test_budget_fits_the_candidates():
    assert check_budget_fits("12", 12, where="p") == 12 and check_budget_fits("0.5", 12, where="p") == 6
    with pytest.raises(KdataError, match=r"--budget 13: larger than the pool \(12 samples\)"):
        check_budget_fits("13", 12, where="p")
    with pytest.raises(KdataError, match="p: the pool is empty"):
        check_budget_fits("0.5", 0, where="p")


def test_cli_budget_over_the_pool_fails_before_any_work(tmp_path, capsys):
    pool = _parquet(tmp_path / "p.parquet", [f"s{i}" for i in range(12)])
    err = _select_fails_before_any_work(tmp_path, capsys, pool, "--budget", "99999")
    assert "--budget 99999: larger than the pool (12 samples)" in err


def test_cli_repeated_id_fails_before_any_work(tmp_path, capsys):
    ids = [f"s{i}" for i in range(12)]
    ids[11] = "s0"
    err = _select_fails_before_any_work(tmp_path, capsys, _parquet(tmp_path / "dup.parquet", ids), "--budget", "5")
    assert "dup.parquet" in err and "sample_id 's0' occurs more than once" in err


def test_cli_key_repeated_across_tars_fails_before_any_work(tmp_path, capsys):
    err = _select_fails_before_any_work(tmp_path, capsys, _tars(tmp_path / "wds", ["k0", "k1"], ["k1", "k2"]),
                                        "--budget", "2")
    assert "sample_id 'k1' occurs more than once in the pool (in a.tar and b.tar)" in err


def test_scores_budget_over_the_candidates_is_one_line(tmp_path, capsys):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(9, 10)).astype(np.float32)
    pq.write_table(pa.table({"sample_id": [f"q{i}" for i in range(9)],
                             "teacher_logits": list(logits), "student_logits": list(logits * 0.5)}),
                   tmp_path / "s.parquet")
    code = main(["select", "--scores", str(tmp_path / "s.parquet"), "--method", "kd3", "--budget", "10",
                 "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--budget 10: larger than the pool (9 samples)" in err, err
    assert main(["select", "--scores", str(tmp_path / "s.parquet"), "--method", "kd3", "--budget", "9",
                 "--out", str(tmp_path / "o"), "--quiet"]) == 0


def test_ids_that_differ_only_in_unicode_form_are_two_samples_with_one_warning(tmp_path):
    import unicodedata

    from PIL import Image

    from kdata.core.warn import KdataWarning

    (tmp_path / "a").mkdir()
    for i, name in enumerate([unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café"), "x",
                              unicodedata.normalize("NFC", "naïve"), unicodedata.normalize("NFD", "naïve")]):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "a" / f"{name}.png")
    with pytest.warns(KdataWarning) as got:
        assert check_unique_pool_ids(open_pool(str(tmp_path))) == 5
    assert len(got) == 1 and "differ only in their Unicode form" in str(got[0].message)
    assert "caf\\xe9" in str(got[0].message) and "cafe\\u0301" in str(got[0].message)  # the forms told apart
