"""builtin:text-web / builtin:text-test: standard-library docstrings shaped like web text."""

from __future__ import annotations

import difflib

import pyarrow as pa

from kdata.dataset.schema import validate_pool
from kdata.pools import builtin_text, stdlib_text
from kdata.pools.spec import open_pool


def test_web_pool_is_deterministic_and_has_every_kind():
    pool, truth = builtin_text.text_web(seed=0), builtin_text.text_web_truth(seed=0)
    validate_pool(pool.schema, where="builtin:text-web")
    builtin_text._build_web.cache_clear()
    stdlib_text.corpus.cache_clear()
    stdlib_text.splits.cache_clear()
    again = builtin_text.text_web(seed=0)
    assert again.equals(pool)  # rebuilt from the sources: the same rows, ids and order
    assert 800 <= pool.num_rows <= 3000
    ids = pool.column("sample_id").to_pylist()
    assert len(set(ids)) == len(ids) and ids == truth.column("sample_id").to_pylist()
    sources = pool.column("source").to_pylist()
    assert set(sources) == set(builtin_text.KINDS)
    assert sources == truth.column("truth").to_pylist()
    assert all(t for t in pool.column("text").to_pylist())
    assert set(pool.column("label").to_pylist()) == set(stdlib_text.DOMAIN_NAMES)
    assert pool.column("image").null_count == pool.num_rows


def test_noise_junk_and_near_duplicates_are_what_they_say():
    pool = builtin_text.text_web(seed=0).to_pylist()
    truth = builtin_text.text_web_truth(seed=0).to_pylist()
    by_id = {r["sample_id"]: r for r in pool}
    noisy = [(p, t) for p, t in zip(pool, truth) if t["truth"] == "noisy_label"]
    clean = [(p, t) for p, t in zip(pool, truth) if t["truth"] == "clean"]
    assert all(p["label"] != t["true_domain"] for p, t in noisy)
    assert all(p["label"] == t["true_domain"] == p["domain"] for p, t in clean)
    assert 0.10 < len(noisy) / (len(noisy) + len(clean)) < 0.20  # ~15% wrong labels
    junk = [t["junk_kind"] for t in truth if t["truth"] == "junk"]
    assert set(junk) == set(builtin_text.JUNK_KINDS)
    for p, t in zip(pool, truth):
        if t["truth"] == "near_duplicate":
            original = by_id[t["dup_of"]]
            assert p["text"] != original["text"] and p["label"] == original["label"]
            a, b = p["text"].lower().split(), original["text"].lower().split()
            assert abs(len(a) - len(b)) <= 3 and difflib.SequenceMatcher(None, a, b, autojunk=False).ratio() > 0.75


def test_test_split_is_clean_and_disjoint_from_pool_and_teacher_corpus():
    test = builtin_text.text_test()
    validate_pool(test.schema, where="builtin:text-test")
    texts = set(test.column("text").to_pylist())
    assert len(texts) == test.num_rows > 100
    assert set(test.column("source").to_pylist()) == {"clean"}
    assert test.column("label").to_pylist() == test.column("domain").to_pylist()
    pool_texts = set(builtin_text.text_web(seed=0).column("text").to_pylist())
    train_texts = {t for t, _ in stdlib_text.split_texts("train")}
    assert not texts & pool_texts and not texts & train_texts and not pool_texts & train_texts


def test_open_pool_reads_the_builtins_with_the_python_version_in_the_fingerprint():
    pool = open_pool("builtin:text-web")
    table = pool.read_all()
    assert table.num_rows == builtin_text.text_web(seed=0).num_rows
    assert table.column("sample_id").to_pylist() == builtin_text.text_web(seed=0).column("sample_id").to_pylist()
    assert len(pool.units) == 4
    version = stdlib_text.python_version()
    assert all(u.fingerprint().endswith(f"+python{version}") for u in pool.units)
    assert pool.extra["python_version"] == version
    test = open_pool("builtin:text-test")
    assert test.read_all().num_rows == builtin_text.text_test().num_rows
    assert isinstance(test.units[0].read(), pa.Table)
    assert pool.labels() == sorted(stdlib_text.DOMAIN_NAMES)


def test_docstrings_are_parsed_not_imported(monkeypatch):
    import sys

    before = set(sys.modules)
    stdlib_text.corpus.cache_clear()
    stdlib_text.corpus()
    assert not {"telnetlib", "nntplib", "tkinter", "antigravity"} & (set(sys.modules) - before)
