"""A student or reference that shares the teacher's tokenizer but has fewer positions: every model
sharing it is scored on the same ids, truncated to the smallest limit among them (recorded as
``scoring.max_length`` and said once on stderr), instead of indexing past the short model's
position table. Real tiny GPT-2 models built in the test, no mocks."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch

pytest.importorskip("transformers")

from kdata.cli import main  # noqa: E402
from kdata.models.hf import load_hf  # noqa: E402
from kdata.pools.spec import open_pool  # noqa: E402
from kdata.scoring.text import TextScoreConfig, score_text_table, text_models, text_unit_key  # noqa: E402
from tests.helpers.text_models import byte_tokenizer, tiny_lm  # noqa: E402

LONG = ("the cat sat on the mat and then the dog ran in the park while somebody read a long book "
        "about the sea, the wind and the boats that sail on it every morning")  # > 64 byte tokens


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("maxlen")
    tiny_lm(d / "t64", seed=0, n_positions=64)
    tiny_lm(d / "s32", seed=1, n_embd=16, n_positions=32)
    tiny_lm(d / "s64", seed=1, n_embd=16, n_positions=64)
    tiny_lm(d / "r_other", seed=2, n_positions=128, extra_tokens=("<x>",))  # another tokenizer: per byte
    lines = []
    for i in range(12):
        text = f"{LONG} #{i}" if i % 3 else f"short text number {i}"
        lines.append(json.dumps({"sample_id": f"x{i:02d}", "text": text}))
    (d / "pool.jsonl").write_text("\n".join(lines) + "\n")
    assert sum(len(json.loads(x)["text"]) > 64 for x in lines) == 8
    return d


def _select(assets, out, *, student="s32", reference=None, method="kd3", extra=()):
    argv = ["select", "--pool", str(assets / "pool.jsonl"), "--teacher", f"hf:{assets / 't64'}",
            "--student", f"hf:{assets / student}", "--method", method, "--budget", "0.5", "--device", "cpu",
            "--out", str(out), *extra]
    if reference:
        argv += ["--reference", f"hf:{assets / reference}"]
    return main(argv)


def _scoring(out) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    return manifest["scoring"] if "scoring" in manifest else manifest["extra"]["scoring"]


def _scores(out):
    """Every scored row (kept or rejected) by sample id, from decisions + shards."""
    shards = pads.dataset(str(out / "data"), format="parquet").to_table().to_pylist()
    return {r["sample_id"]: r for r in shards}


def _own_nll_sum(path, text: str, n: int) -> tuple[float, int]:
    """Σ NLL of ``text``'s first ``n`` tokens under the model at ``path`` (own forward pass)."""
    model = load_hf(path)
    ids = torch.tensor([model.tokenizer(text)["input_ids"][:n]])
    with torch.inference_mode():
        logp = torch.log_softmax(model.model(input_ids=ids).logits[0, :-1].float(), -1)
    return -logp.gather(1, ids[0, 1:, None]).sum().item(), ids.shape[1]


def _texts(assets) -> dict:
    return {json.loads(x)["sample_id"]: json.loads(x)["text"] for x in (assets / "pool.jsonl").read_text().splitlines()}


def test_select_with_a_shorter_shared_student_scores_the_first_32_tokens(assets, tmp_path, capsys):
    out = tmp_path / "o"
    assert _select(assets, out) == 0
    err = capsys.readouterr().err
    assert err.count("kdata: note:") == 1 and "truncated to 32 tokens" in err and "teacher: 64" in err
    assert "error" not in err
    assert _scoring(out)["max_length"] == 32
    rows = _scores(out)
    assert rows and pq.read_table(out / "decisions.parquet").num_rows == 12
    texts = _texts(assets)
    for sid, row in rows.items():
        want_s, n = _own_nll_sum(assets / "s32", texts[sid], 32)
        want_t, _ = _own_nll_sum(assets / "t64", texts[sid], 32)
        assert row["n_tokens"] == n == min(32, len(texts[sid]))
        assert len(row["input_ids"]) == n
        assert row["student_nll"] == pytest.approx(want_s / (n - 1), rel=1e-4)
        assert row["teacher_nll"] == pytest.approx(want_t / (n - 1), rel=1e-4)
        assert row["kl_ts"] is not None and np.isfinite(row["kl_ts"])
    decisions = pq.read_table(out / "decisions.parquet").to_pylist()  # every row, kept or not
    for row in decisions:
        want, n = _own_nll_sum(assets / "s32", texts[row["sample_id"]], 32)
        assert row["student_nll"] == pytest.approx(want / (n - 1), rel=1e-4)


def test_change_of_student_rescored_at_its_own_length(assets, tmp_path, monkeypatch):
    monkeypatch.setenv("KDATA_CACHE", str(tmp_path / "cache"))
    assert _select(assets, tmp_path / "a") == 0
    assert _select(assets, tmp_path / "b", student="s64") == 0
    assert _scoring(tmp_path / "a")["max_length"] == 32 and _scoring(tmp_path / "b")["max_length"] == 64
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert m.get("score_cache_hits", m.get("extra", {}).get("score_cache_hits", 0)) == 0
    texts = _texts(assets)
    for sid, row in _scores(tmp_path / "b").items():
        want, n = _own_nll_sum(assets / "s64", texts[sid], 64)
        assert row["n_tokens"] == n and row["student_nll"] == pytest.approx(want / (n - 1), rel=1e-4)
    # the teacher alone, loaded once, keyed at each effective length; the loaded model is left as it is
    t, s32, s64 = (load_hf(assets / x) for x in ("t64", "s32", "s64"))
    unit = open_pool(str(assets / "pool.jsonl")).units[0]
    a, b = text_models(t, s32), text_models(t, s64)
    assert (a.max_length, b.max_length, t.max_length) == (32, 64, 64)
    assert a.teacher.model is t.model and a.length_limited_by[:2] == ("student", s32.spec)
    cfg = TextScoreConfig()
    assert text_unit_key(unit, a, cfg, device="cpu") != text_unit_key(unit, b, cfg, device="cpu")


def test_shorter_shared_reference_and_per_byte_reference(assets, tmp_path, capsys):
    """A 32-position reference sharing the tokenizer limits everyone; a reference with another
    tokenizer (per-byte path) does not, and still scores."""
    out = tmp_path / "ref32"
    assert _select(assets, out, student="s64", reference="s32", method="miniplm") == 0
    assert "reference " in capsys.readouterr().err and _scoring(out)["max_length"] == 32
    texts = _texts(assets)
    for sid, row in _scores(out).items():
        want, n = _own_nll_sum(assets / "s32", texts[sid], 32)
        assert row["reference_nll"] == pytest.approx(want / (n - 1), rel=1e-4)
        want_s, _ = _own_nll_sum(assets / "s64", texts[sid], 32)
        assert row["student_nll"] == pytest.approx(want_s / (n - 1), rel=1e-4)
    out = tmp_path / "other"
    assert _select(assets, out, student="s32", reference="r_other", method="miniplm") == 0
    err = capsys.readouterr().err
    assert "per UTF-8 byte" in err and "truncated to 32 tokens" in err
    s = _scoring(out)
    assert s["max_length"] == 32 and s["reference_tokenizer_shared"] is False
    rows = _scores(out)
    assert rows and all(np.isfinite(r["reference_nll"]) and r["n_tokens"] <= 32 for r in rows.values())


def test_max_length_flag_below_both_is_kept(assets, tmp_path, capsys):
    out = tmp_path / "ml"
    assert _select(assets, out, extra=("--max-length", "16")) == 0
    assert "kdata: note:" not in capsys.readouterr().err  # nothing lowered beyond what was asked
    assert _scoring(out)["max_length"] == 16
    assert all(r["n_tokens"] <= 16 for r in _scores(out).values())
    out = tmp_path / "ml48"
    assert _select(assets, out, extra=("--max-length", "48")) == 0
    err = capsys.readouterr().err
    assert err.count("kdata: note:") == 1 and "(teacher: 48)" in err and "truncated to 32 tokens" in err
    assert _scoring(out)["max_length"] == 32


def _tiny_classifier(path, *, n_positions: int, seed: int):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    tok = byte_tokenizer()
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=len(tok), n_positions=n_positions, num_labels=2,
                     id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1}, pad_token_id=tok.eos_token_id,
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    GPT2ForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_classifiers_sharing_a_tokenizer_use_the_shorter_limit(tmp_path):
    from kdata.pools.text import text_table

    t = load_hf(_tiny_classifier(tmp_path / "c64", n_positions=64, seed=0))
    s = load_hf(_tiny_classifier(tmp_path / "c32", n_positions=32, seed=1))
    models = text_models(t, s)
    table = text_table(["a", "b"], [LONG, "short"], errors=[None, None], source="t",
                       fields={"label": ["neg", "pos"]})
    scores, quarantined = score_text_table(table, models)
    assert scores.num_rows == 2 and not quarantined and models.max_length == 32
    ids = torch.tensor([t.tokenizer(LONG)["input_ids"][:32]])
    with torch.inference_mode():
        want = s.model(input_ids=ids).logits.float()[0]
    got = scores.column("student_logits").to_pylist()[0]
    assert np.allclose(got, want.numpy(), atol=1e-4)
