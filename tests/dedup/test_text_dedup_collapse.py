"""An embedder that does not separate texts (a tiny causal LM: nearly every vector alike) makes near dedup
remove most of a pool of distinct texts; ``collapse_warning`` says so on stderr and in the dedup info."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from kdata.core.warn import shown_as_lines  # noqa: E402
from kdata.dedup.faiss_dedup import dedup_ranked  # noqa: E402
from kdata.dedup.text import COLLAPSE_SHARE, TEXT_DEFAULTS, collapse_warning, text_embeddings, text_hash  # noqa: E402
from tests.helpers.text_models import WORDS, text_assets  # noqa: E402

TEXTS = [f"{WORDS[i % len(WORDS)]} #{i} {i * i}" for i in range(300)]  # 300 distinct texts


@pytest.fixture(scope="module")
def lm_vectors():
    spec = f"hf:{text_assets() / 't'}"
    return spec, text_embeddings(TEXTS, spec)


def _dedup(vec, **kw):
    return dedup_ranked(hashes=[text_hash(t) for t in TEXTS], pixels=vec, embeddings=vec, **TEXT_DEFAULTS, **kw)


def test_near_dedup_with_a_collapsed_embedder_warns_once(lm_vectors, capsys):
    spec, vec = lm_vectors
    res = _dedup(vec, level="near")
    assert res.info["removed"]["near"] > COLLAPSE_SHARE * len(TEXTS)  # the reproduced defect: most texts gone
    with shown_as_lines():  # as the kdata command shows kdata's warnings
        msg = collapse_warning(res.info, embedder=spec)
    err = capsys.readouterr().err
    assert msg is not None and res.info["warning"] == msg and spec in msg and "may not separate" in msg
    assert err.count("\n") == 1 and err.startswith("kdata: warning: near/semantic dedup removed")


def test_no_warning_when_dedup_keeps_most_texts_or_frac_asked_for_it(lm_vectors, capsys):
    spec, vec = lm_vectors
    res = _dedup(vec, level="near", threshold=0.99999)
    assert res.info["removed"]["near"] <= COLLAPSE_SHARE * len(TEXTS)
    assert collapse_warning(res.info, embedder=spec) is None and "warning" not in res.info
    asked = {"n_in": 300, "removed": {"exact": 0, "near": 10, "semantic": 170}}
    assert collapse_warning(asked, embedder=spec, frac=0.6) is None  # --dedup-frac asked for those removals
    small = {"n_in": 12, "removed": {"exact": 0, "near": 10}}  # too few texts for a share to mean much
    assert collapse_warning(small, embedder=spec) is None and capsys.readouterr().err == ""
