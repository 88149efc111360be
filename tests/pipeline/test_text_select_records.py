"""What a causal-LM ``kdata select`` run says and records: one stderr note when the reference tokenises
unlike the teacher, and the per-token top-k the shards really hold (not the requested one) in the
manifest and on the card, while the hashed config keeps the request."""

from __future__ import annotations

import json

import pyarrow.dataset as pads
import pytest

pytest.importorskip("transformers")

from kdata.models.hf import load_hf  # noqa: E402
from kdata.pipeline.config import RunOptions, SelectConfig  # noqa: E402
from kdata.pipeline.run import run_select  # noqa: E402
from tests.helpers.text_models import text_assets  # noqa: E402

pytestmark = pytest.mark.usefixtures("warning_lines")  # kdata's warnings read from stderr, as the CLI prints them


def _select(tmp_path, name, **kw):
    d = text_assets()
    cfg = SelectConfig(pool=str(d / "pool.jsonl"), teacher=f"hf:{d / 't'}", student=f"hf:{d / 's'}",
                       reference=f"hf:{d / 'r'}", method="miniplm", budget="0.3", **kw)
    run_select(cfg, out=str(tmp_path / name), opts=RunOptions(device="cpu", num_workers=0, cache=False))
    return tmp_path / name, cfg


def test_a_reference_with_another_tokenizer_is_said_once(tmp_path, capsys):
    _select(tmp_path, "o")
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "tokenise" in line]
    assert len(notes) == 1 and notes[0].startswith("kdata: note: teacher hf:") and "per UTF-8 byte" in notes[0]
    assert "and reference hf:" in notes[0] and "the reference's NLL" in notes[0]
    assert "student" not in notes[0] and "kl_ts" not in notes[0]  # the student shares the teacher's tokenizer


def test_manifest_and_card_record_the_stored_token_topk(tmp_path):
    out, cfg = _select(tmp_path, "k", token_topk=1000)
    vocab = load_hf(text_assets() / "t").vocab_size
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["scoring"]["token_topk"] == vocab < 1000
    assert manifest["config"]["token_topk"] == 1000 and manifest["config_hash"] == cfg.hash()
    assert manifest["topk"] == vocab  # the per-token k, not the class top-k of the config (5)
    shards = pads.dataset(str(out / "data"), format="parquet").to_table()
    meta = json.loads(shards.schema.metadata[b"kdata"])
    assert (meta["kind"], meta["token_topk"], meta["topk"]) == ("causal_lm", vocab, vocab)
    assert {len(p) for row in shards.column("teacher_topk_ids").to_pylist() for p in row} == {vocab}
    card = (out / "README.md").read_text()
    assert f"per-token top-{vocab} log-probabilities" in card and "top-1000" not in card


def test_a_temperature_other_than_1_is_refused_for_a_causal_lm(tmp_path):
    """The per-token soft labels are stored at temperature 1: a run may not record another as theirs."""
    from kdata.core.errors import KdataError

    with pytest.raises(KdataError, match=r"--temperature 2: a causal-LM teacher's per-token soft labels are stored "
                                         r"at temperature 1"):
        _select(tmp_path, "t2", temperature=2.0)
    assert not (tmp_path / "t2").exists()
