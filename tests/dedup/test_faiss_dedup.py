"""Deduplication: pair search vs brute force, levels, survivor = better ranked, pipeline, CLI, balance."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from kdata.core import vectors as V
from kdata.dedup import faiss_dedup as D
from kdata.dedup import features as F


def planted(n: int, d: int, n_pairs: int, *, seed: int = 0, noise: float = 0.01, centres: int = 200):
    """Clustered unit vectors (like real embeddings) with ``n_pairs`` planted near-duplicate pairs."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.9 * rng.standard_normal((n, d)).astype(np.float32)
    x = V.l2_normalize(x)
    perm = rng.permutation(n)
    a, b = perm[:n_pairs], perm[n_pairs:2 * n_pairs]
    x[b] = x[a] + noise * rng.standard_normal((n_pairs, d)).astype(np.float32)
    return V.l2_normalize(x), a, b


def brute_pairs(x, threshold):
    s = x @ x.T
    i, j = np.nonzero(np.triu(s >= threshold, 1))
    return set(zip(i.tolist(), j.tolist()))


def test_exact_pair_search_equals_brute_force():
    x, a, b = planted(3000, 64, 150, seed=1)
    for t in (0.95, 0.7):
        i, j, s = V.similar_pairs(x, threshold=t)
        assert set(zip(i.tolist(), j.tolist())) == brute_pairs(x, t)
        assert np.allclose(s, (x[i] * x[j]).sum(1), atol=1e-5)


def test_a_pair_at_the_threshold_is_found_by_both_searches():
    """≥ threshold on both paths: faiss's range search alone keeps only pairs strictly above it."""
    same = np.zeros((3, 8), np.float32)
    same[:, 0] = 1.0
    assert V.similar_pairs(same, threshold=1.0)[0].size == 3
    v = np.array([[1.0, 0.0], [0.6, 0.8]], np.float32)  # cosine exactly 0.6
    assert V.similar_pairs(v, threshold=0.6)[0].size == 1
    assert V.similar_pairs(v, threshold=0.6, exact_max=1)[0].size == 1


def test_cell_search_recall_and_precision_at_scale():
    """The approximate (k-means cell) path at N=20,000, d=256: planted pairs found with recall ≥ 0.99,
    every reported pair is real, and dedup removes no non-duplicate."""
    n, n_pairs, t = 20_000, 1000, 0.95
    x, a, b = planted(n, 256, n_pairs, seed=2)
    i, j, s = V.similar_pairs(x, threshold=t, exact_max=1000)  # force the cell path
    assert (s >= t).all() and np.allclose(s, (x[i] * x[j]).sum(1), atol=1e-4)
    found = set(zip(i.tolist(), j.tolist()))
    want = {(min(p, q), max(p, q)) for p, q in zip(a.tolist(), b.tolist())}
    recall = len(found & want) / len(want)
    assert recall >= 0.99
    assert len(set(map(tuple, np.c_[i, j].tolist()))) == len(i)  # no pair reported twice
    dup_of = D.greedy_survivors(n, i, j, s)
    removed = set(np.flatnonzero(dup_of >= 0).tolist())
    assert removed <= set(a.tolist()) | set(b.tolist())  # only planted rows are removed
    assert len(removed) >= 0.99 * n_pairs
    for r in removed:  # the better-ranked (lower index) of each pair survives
        assert dup_of[r] < r and dup_of[dup_of[r]] == -1


def test_greedy_survivor_rule():
    # 0~1, 1~2 (0 !~ 2): 1 goes (dup of 0); 2's only similar row was removed, so 2 survives
    i, j, s = np.array([0, 1]), np.array([1, 2]), np.array([0.99, 0.99], np.float32)
    assert D.greedy_survivors(3, i, j, s).tolist() == [-1, 0, -1]
    # 3 is similar to survivors 0 (0.97) and 2 (0.99): it names the most similar survivor
    i, j, s = np.array([0, 1, 0, 2]), np.array([1, 2, 3, 3]), np.array([.99, .99, .97, .99], np.float32)
    assert D.greedy_survivors(4, i, j, s).tolist() == [-1, 0, -1, 2]


def _png(arr, **kw):
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="PNG", **kw)
    return buf.getvalue()


def test_exact_hash_is_on_decoded_pixels_and_near_embedding_tolerates_noise():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    ring = np.exp(-((np.hypot(yy - 16, xx - 15) - 9) ** 2) / 6.0)  # a smooth "0"
    arr = (255 * ring).astype(np.uint8)
    b1, b2 = _png(arr, compress_level=0), _png(arr, compress_level=9)
    assert b1 != b2
    (h1, v1), (h2, _) = F.image_features(b1), F.image_features(b2)
    assert h1 == h2 and v1.shape == (F.PIXEL_SIZE ** 2,)
    other = arr.copy()
    other[0, 0] ^= 1
    assert F.image_features(_png(other))[0] != h1
    noisy = np.clip(arr + rng.normal(0, 6, arr.shape), 0, 255).astype(np.uint8)
    _, vn = F.image_features(_png(noisy))
    assert float(v1 @ vn) >= D.NEAR_THRESHOLD
    res = D.dedup_ranked(level="exact", hashes=[h1, "x", h2])
    assert res.dup_of.tolist() == [-1, -1, 0] and res.level_of[2] == "exact"


def test_semantic_threshold_and_fraction():
    x, a, b = planted(2000, 32, 100, seed=3, noise=0.02, centres=20)
    hashes = [str(k) for k in range(len(x))]
    pix = np.zeros((len(x), 4), np.float32)  # near level finds nothing
    res = D.dedup_ranked(level="semantic", hashes=hashes, pixels=pix, embeddings=x.astype(np.float16),
                         threshold=0.99)
    removed = np.flatnonzero(res.dup_of >= 0)
    assert set(removed.tolist()) <= set(a.tolist()) | set(b.tolist())
    assert len(removed) >= 0.95 * 100 and (res.level_of[removed] == "semantic").all()
    assert (res.dup_of[removed] < removed).all() and (res.dup_of[res.dup_of[removed]] == -1).all()
    res = D.dedup_ranked(level="semantic", hashes=hashes, pixels=pix, embeddings=x, frac=0.2)
    assert int((res.dup_of >= 0).sum()) == 400
    assert res.info["semantic_threshold"] < 0.99


def test_bad_options_are_one_line_errors():
    from kdata.core.errors import KdataError

    for level, kw in [("fuzzy", {}), ("near", {"frac": 0.2}), ("semantic", {"frac": 1.5}),
                      ("exact", {"threshold": 0.9}), ("near", {"threshold": 2.0}), (None, {"threshold": 0.9}),
                      ("semantic", {"frac": 0.2, "threshold": 0.9})]:
        with pytest.raises(KdataError):
            D.check_options(level, **kw)


def test_semantic_dedup_on_your_own_embeddings_alone():
    """dedup_ranked(level="semantic", embeddings=E) was a TypeError (it needed hashes and pixels): the
    levels before the requested one run when their input is given and are skipped, and recorded, when not."""
    x, a, b = planted(600, 32, 20, seed=5, noise=0.01, centres=10)
    alone = D.dedup_ranked(level="semantic", embeddings=x, threshold=0.99)
    removed = np.flatnonzero(alone.dup_of >= 0)
    assert len(removed) >= 19 and set(removed.tolist()) <= set(a.tolist()) | set(b.tolist())
    assert alone.info["skipped"] == ["exact (no hashes given)", "near (no pixels given)"]
    assert set(alone.info["removed"]) == {"semantic"} and (alone.level_of[removed] == "semantic").all()
    hashes = [str(k) for k in range(len(x))]
    hashes[7] = hashes[3]  # one exact copy, found when the hashes are given
    with_hashes = D.dedup_ranked(level="semantic", hashes=hashes, embeddings=x, threshold=0.99)
    assert with_hashes.dup_of[7] == 3 and with_hashes.info["skipped"] == ["near (no pixels given)"]
    pixels = np.random.default_rng(0).standard_normal((len(x), 16)).astype(np.float32)  # no near copies
    full = D.dedup_ranked(level="semantic", hashes=hashes, pixels=pixels, embeddings=x, threshold=0.99)
    assert "skipped" not in full.info and full.info["removed"]["exact"] == 1 and full.info["removed"]["near"] == 0
    assert full.dup_of.tolist() == with_hashes.dup_of.tolist()


@pytest.mark.parametrize("kw,match", [
    ({"level": "semantic"}, r"^dedup: level 'semantic' needs embeddings"),
    ({"level": "near", "embeddings": np.ones((4, 2))}, r"^dedup: level 'near' needs pixels"),
    ({"level": "exact"}, r"^dedup: level 'exact' needs hashes"),
    ({"level": "semantic", "embeddings": np.where(np.arange(6)[:, None] == 3, np.nan, np.ones((6, 3)))},
     r"^dedup: embeddings row 3 is not finite \(nan\)"),
    ({"level": "near", "hashes": list("abcdef"), "pixels": np.full((6, 3), np.inf)}, r"^dedup: pixels row 0 is not finite"),
    ({"level": "semantic", "hashes": list("abcdef"), "embeddings": np.ones((5, 3))},
     r"^dedup: inputs differ in length \(hashes 6 rows, embeddings 5 rows\)"),
    ({"level": "near", "hashes": list("abc"), "pixels": np.ones((4, 2)), "embeddings": np.ones((9, 2))},
     r"^dedup: inputs differ in length \(hashes 3 rows, pixels 4 rows\)"),  # embeddings: not used by near
    ({"level": "semantic", "embeddings": np.ones(6)}, r"^dedup: embeddings must be a 2-D array"),
    ({"level": "semantic", "embeddings": [["a", "b"]]}, r"^dedup: embeddings must be a numeric array"),
])
def test_bad_dedup_inputs_are_one_line_errors(kw, match):
    """A NaN row was a multi-line faiss RuntimeError, arrays of the wrong length an IndexError."""
    from kdata.core.errors import KdataError

    with pytest.raises(KdataError, match=match) as err:
        D.dedup_ranked(**kw)
    assert "\n" not in str(err.value)


def test_gpu_probe_falls_back_on_cpu():
    import faiss

    has_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    assert V.faiss_gpu_ok() in ((True, False) if has_gpu else (False,))


# ------------------------------------------------------------------------------------------------
# The pipeline on builtin:digits-web

def _truth():
    from kdata.pools.builtin import digits_web_truth

    t = digits_web_truth().to_pandas()
    root = {s: (d if isinstance(d, str) else s) for s, d in zip(t.sample_id, t.dup_of)}
    return dict(zip(t.sample_id, t.truth)), root


@pytest.fixture(scope="module")
def near_run(tmp_path_factory, builtin_models):
    from kdata.pipeline.config import RunOptions, SelectConfig
    from kdata.pipeline.run import run_select

    out = tmp_path_factory.mktemp("dd") / "near"
    run_select(SelectConfig(method="kd3", budget="0.5", dedup="near"), out=str(out), opts=RunOptions(device="cpu"))
    return out


def test_near_dedup_on_digits_web(near_run):
    truth, root = _truth()
    dec = pq.read_table(near_run / "decisions.parquet").to_pandas()
    dups = dec[dec.reason.fillna("").str.startswith("duplicate_of:")]
    assert (dups.stage == "dedup").all() and (dups.decision == "rejected").all()
    target = dict(zip(dups.sample_id, dups.reason.str.split(":", n=1).str[1]))
    planted_ids = [s for s, k in truth.items() if k in ("near_dup", "exact_dup")]
    found = sum(1 for s in planted_ids
                if (s in target and root[target[s]] == root[s]) or (root[s] in target and target[root[s]] == s))
    assert found / len(planted_ids) >= 0.95
    wrong = [s for s, t in target.items() if root[t] != root[s]]
    clean = [s for s, k in truth.items() if k == "clean"]
    assert sum(truth[s] == "clean" for s in wrong) <= 0.02 * len(clean)
    # the survivor is the better ranked: its kd3 score is at least the removed row's
    score = dict(zip(dec.sample_id, dec.score_kd3))
    assert all(score[t] >= score[s] for s, t in target.items())
    # survivors are never themselves removed as duplicates, and duplicates did not take budget
    assert not set(target.values()) & set(target)
    import json

    m = json.loads((near_run / "manifest.json").read_text())
    assert m["counts"]["kept"] == m["budget_rows"]
    assert m["method_info"]["dedup"]["removed"]["exact"] >= 60


def test_kdata_dedup_cli_on_curated_shards(demo_run, tmp_path, capsys):
    from kdata.cli import main
    from kdata.dataset.writer import read_shards, verify

    out = tmp_path / "dd"
    assert main(["dedup", "--shards", str(demo_run), "--dedup", "near", "--out", str(out), "--json"]) == 0
    import json

    rep = json.loads(capsys.readouterr().out)
    assert verify(out) == []
    src, got = read_shards(demo_run), read_shards(out)
    dec = pq.read_table(out / "decisions.parquet").to_pandas()
    assert len(dec) == src.num_rows and rep["counts"]["kept"] == got.num_rows
    assert rep["counts"]["rejected"] == (dec.decision == "rejected").sum() > 0
    assert got.column("rank").to_pylist() == list(range(got.num_rows))
    rank = dict(zip(src.column("sample_id").to_pylist(), src.column("rank").to_pylist()))
    for s, r in zip(dec.sample_id, dec.reason):
        if isinstance(r, str):
            assert r.startswith("duplicate_of:") and rank[r.split(":", 1)[1]] < rank[s]
    kept_hashes, _ = F.payload_features(got, pixels=False)
    assert len(set(kept_hashes)) == len(kept_hashes)
    assert main(["dedup", "--shards", str(demo_run), "--dedup", "near", "--out", str(out)]) == 0  # idempotent
    assert "already complete" in capsys.readouterr().out
    assert main(["dedup", "--shards", str(tmp_path / "nope"), "--dedup", "near", "--out", str(tmp_path / "x")]) == 2
    assert main(["dedup", "--shards", str(demo_run), "--dedup", "near", "--dedup-frac", "0.2",
                 "--out", str(tmp_path / "y")]) == 2
    assert "--dedup-frac" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_balance_cluster_spreads_the_budget(builtin_models):
    from kdata.selection.balance import cluster_groups, groups_for
    from kdata.selection.methods.view import ScoreView
    from kdata.pipeline.config import SelectConfig
    from kdata.pipeline.prepare import prepare
    from kdata.scoring.score import score_pool
    from kdata.selection.run import select

    prep = prepare(SelectConfig(method="kd3", balance="cluster"))  # a run that balances by cluster loads embeddings
    scores, _, _ = score_pool(prep.pool, prep.teacher, prep.student, config=prep.score_cfg)
    view = ScoreView(scores, num_classes=10)
    cand = np.arange(len(view))
    g = groups_for("cluster", view, cand, seed=0)
    assert np.array_equal(g, cluster_groups(view.col("embedding"), seed=0))  # seeded: reproducible
    k = len(np.unique(g))
    assert k >= 10
    budget = 200
    plain = select(scores, methods=["kd3"], budget=budget, num_classes=10)
    bal = select(scores, methods=["kd3"], budget=budget, num_classes=10, balance="cluster")
    assert bal.kept.sum() == plain.kept.sum() == budget
    per_plain = np.bincount(g[plain.kept], minlength=k)
    per_bal = np.bincount(g[bal.kept], minlength=k)
    sizes = np.bincount(g, minlength=k)
    # balanced: every cluster gets min(its size, an even share), so the spread is much flatter
    assert (per_bal >= np.minimum(sizes, budget // k - 1)).all()
    assert per_bal.max() < per_plain.max()
    assert (per_bal > 0).sum() >= (per_plain > 0).sum()
    info = bal.info["balance"]  # recorded for the manifest: the clusters and what each kept
    assert info["kind"] == "cluster" and info["groups"] == k and info["kept_max"] == per_bal.max()
    assert sum(v["kept"] for v in info["per_group"].values()) == budget and "balance" not in plain.info


def test_select_cli_with_dedup_and_cluster_balance(builtin_models, tmp_path):
    from kdata.cli import main

    out = tmp_path / "sel"
    assert main(["select", "--method", "kd3", "--budget", "0.2", "--dedup", "exact", "--balance", "cluster",
                 "--out", str(out), "--quiet"]) == 0
    dec = pq.read_table(out / "decisions.parquet").to_pandas()
    assert (dec.reason.fillna("").str.startswith("duplicate_of:")).sum() >= 60
    assert main(["select", "--dedup", "near", "--dedup-frac", "0.2", "--out", str(tmp_path / "bad")]) == 2


def test_semantic_dedup_of_shards_uses_the_manifest_teacher(demo_run, tmp_path):
    from kdata.dataset.writer import read_shards, verify

    from kdata.pipeline.derive import dedup_dataset

    rep = dedup_dataset(str(demo_run), out=str(tmp_path / "sem"), level="semantic", frac=0.25)
    n = read_shards(demo_run).num_rows
    assert rep.counts["n_in"] == n and rep.counts["rejected"] == round(0.25 * n)
    assert rep.info["dedup"]["removed"]["semantic"] > 0 and verify(tmp_path / "sem") == []


def test_pool_features_are_cached_per_unit_and_follow_its_content(tmp_path, monkeypatch):
    """A rerun reads the hashes and pixel embeddings from the cache instead of decoding every image
    again; a unit whose bytes change is computed afresh."""
    from kdata.pools.base import PoolUnit
    from kdata.pools.readers import open_image_folder
    from tests.helpers.real_inputs import digits, make_image_folder, png_bytes

    monkeypatch.setenv("KDATA_CACHE", str(tmp_path / "cache"))
    root = make_image_folder(tmp_path / "pool", n=20)
    pool = open_image_folder(str(root), unit_files=8)
    ids = np.array(pool.read_all().column("sample_id").to_pylist()[::-1], dtype=object)  # any order
    hashes, vecs = F.pool_features(pool, ids, pixels=True)
    direct_h, direct_v = F.payload_features(pool.read_all(), pixels=True)
    order = {s: i for i, s in enumerate(pool.read_all().column("sample_id").to_pylist())}
    back = [order[s] for s in ids]
    assert list(hashes) == [direct_h[i] for i in back] and np.array_equal(vecs, direct_v[back])

    def unreadable():
        raise AssertionError("decoded again although the unit's features are cached")

    cached = [PoolUnit(name=u.name, read=unreadable, fingerprint=u.fingerprint) for u in pool.units]
    again = F.pool_features(type(pool)(spec=pool.spec, units=cached), ids, pixels=True)
    assert list(again[0]) == list(hashes) and np.array_equal(again[1], vecs)
    victim = pool.units[1].read().column("sample_id")[0].as_py()
    (root / victim).write_bytes(png_bytes(np.rot90(digits(1, offset=300)[0][0])))
    fresh = open_image_folder(str(root), unit_files=8)
    h2, _ = F.pool_features(fresh, ids, pixels=True)
    changed = [s for s, a, b in zip(ids, hashes, h2) if a != b]
    assert changed == [victim]


def test_pool_features_never_read_a_unit_holding_none_of_the_candidates(tmp_path, monkeypatch):
    """A unit without a candidate is found from its ids alone (no payload read, nothing cached): its
    image pages are wrecked on disk and the features of the others still come back, equal to those
    of the undamaged pool; a unit that holds candidates is read and cached whole, row range by row
    range, so a later run with other candidates finds it cached."""
    import pyarrow.parquet as pq

    from kdata.pools.spec import open_pool
    from tests.helpers.damage import wreck_chunks
    from tests.helpers.real_inputs import make_parquet_units

    monkeypatch.setenv("KDATA_CACHE", str(tmp_path / "cache"))
    root = make_parquet_units(tmp_path / "pool", units=3, rows=30)
    pool = open_pool(str(root))
    ids = np.array([s for u in pool.units[:2] for s in u.sample_ids().to_pylist()[::3]], dtype=object)
    want = F.payload_features(pool.read_all(), pixels=True)
    at = {s: i for i, s in enumerate(pool.read_all().column("sample_id").to_pylist())}
    wreck_chunks(root / "part-2.parquet", "image", [0])
    with pytest.raises(Exception):
        pq.read_table(root / "part-2.parquet")
    hashes, vecs = F.pool_features(open_pool(str(root)), ids, pixels=True)
    rows = [at[s] for s in ids]
    assert list(hashes) == [want[0][r] for r in rows] and np.array_equal(vecs, want[1][rows])
    assert len(list((tmp_path / "cache" / "dedup-features").glob("*.json"))) == 2


@pytest.mark.parametrize("level", ["near", "semantic"])
def test_near_and_semantic_dedup_hold_one_copy_of_their_vectors(level):
    """The rows left after exact dedup are gathered once and normalised in place; the pair search
    groups rows by cell through positions, not a reordered copy (numpy's allocations, traced): a
    10M-row run needs about one more matrix, not three. The caller's arrays are left as they were,
    and the result is the one a normalised copy gives."""
    import tracemalloc

    from kdata.core.vectors import l2_normalize

    rng = np.random.default_rng(0)
    n, d = 40_000, 256 if level == "near" else 128  # above EXACT_MAX: the cell search
    x = rng.standard_normal((n, d), dtype=np.float32)
    x[rng.integers(0, n, n // 20)] = x[rng.integers(0, n, n // 20)] * 1.001  # near copies
    hashes = [str(i % (n - 400)) for i in range(n)]  # and 400 exact ones
    kept = x.copy()
    kw = {"pixels": x} if level == "near" else {"embeddings": x, "frac": 0.1}
    tracemalloc.start()
    try:
        res = D.dedup_ranked(level=level, hashes=hashes, **kw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * x.nbytes, f"{peak / x.nbytes:.2f} × the input"
    assert np.array_equal(x, kept) and res.info["removed"][level] > 0
    y = kept[:500].copy()
    assert l2_normalize(y, inplace=True) is y and np.array_equal(y, l2_normalize(kept[:500]))
