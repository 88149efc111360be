"""Text dedup: exact on normalised text, near on sentence embeddings of a tiny real encoder (a BertModel
saved with save_pretrained in the test), in ``kdata select`` and in ``kdata dedup`` on a curated text set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("transformers")

from kdata.cli import main  # noqa: E402
from kdata.dedup.text import normalize_text, text_hash  # noqa: E402
from tests.helpers.text_models import byte_tokenizer, text_assets  # noqa: E402

DISTINCT = [
    "The quick brown fox jumps over the lazy dog near the river bank every morning.",
    "Open a file and read its lines one by one, then close the handle when done.",
    "Return the sum of two numbers, raising TypeError when given strings instead.",
    "import os; print(os.getcwd())  # prints the current working directory path",
    "Der Himmel ist blau und die Sonne scheint heute sehr hell über der Stadt.",
    "0x1f 0x3c 0xff 0x00 0x7e binary junk data !!! ### $$$ %%% ^^^ &&& ***",
    "A list of the prime numbers below one hundred: 2, 3, 5, 7, 11, 13, 17, 19.",
    "Compute the median of a sequence of numeric values without sorting twice.",
    "Weather report: light rain in the north, sunny spells in the south later.",
    "SELECT name, count(*) FROM users GROUP BY name ORDER BY 2 DESC LIMIT 10;",
]
NEAR = {  # small edits of DISTINCT[i]
    0: "The quick brown fox jumps over the lazy dog near the river bank every morning!",
    3: "import os; print(os.getcwd())  # prints the current working directory",
    6: "A list of the prime numbers below one hundred: 2, 3, 5, 7, 11, 13, 17, 23.",
}
EXACT = {  # the same text after NFKC, case folding and whitespace collapsing
    1: "OPEN a file and read its lines one by one,\tthen close the handle   when done.",
    8: "Ｗeather report: light rain in the north, sunny spells in the south later.\u00a0",
}
THRESHOLD = 0.997  # this random tiny encoder puts every text close together (see the test below)


def test_normalize_text():
    assert normalize_text("  Ｈello\u00a0\n WORLD\t ") == "hello world"
    assert normalize_text("Straße") == normalize_text("STRASSE")  # casefold, not lower
    assert text_hash("a  b") == text_hash("A b") != text_hash("a b c")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    """A randomly initialised 1-layer BertModel + byte tokenizer (seeded), saved with save_pretrained."""
    import torch
    from transformers import BertConfig, BertModel

    path = tmp_path_factory.mktemp("encoder")
    tok = byte_tokenizer()
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_tiny_encoder_separates_edits_from_distinct_texts(encoder):
    from kdata.models.text_embedder import embed_texts, load_embedder

    x = embed_texts(load_embedder(f"hf:{encoder}"), DISTINCT + list(NEAR.values()))
    s = x @ x.T
    near = [s[i, len(DISTINCT) + k] for k, i in enumerate(NEAR)]
    far = s[:len(DISTINCT), :len(DISTINCT)][np.triu_indices(len(DISTINCT), 1)]
    assert min(near) > THRESHOLD > far.max()


@pytest.fixture(scope="module")
def dup_pool(tmp_path_factory) -> Path:
    rows = [{"sample_id": f"d{i}", "text": t, "domain": "a"} for i, t in enumerate(DISTINCT)]
    rows += [{"sample_id": f"n{i}", "text": t, "domain": "a"} for i, t in NEAR.items()]
    rows += [{"sample_id": f"e{i}", "text": t, "domain": "a"} for i, t in EXACT.items()]
    path = tmp_path_factory.mktemp("duppool") / "pool.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _select(pool, out, *extra) -> int:
    d = text_assets()
    return main(["select", "--pool", str(pool), "--teacher", f"hf:{d / 't'}", "--student", f"hf:{d / 's'}",
                 "--method", "random", "--budget", "1.0", "--out", str(out), "--device", "cpu", "--quiet", *extra])


def _removed(out) -> dict[str, str]:
    d = pq.read_table(out / "decisions.parquet").to_pylist()
    return {r["sample_id"]: r["reason"] for r in d if r["decision"] == "rejected"}


def test_select_dedups_text_exact_and_near(dup_pool, encoder, tmp_path):
    assert _select(dup_pool, tmp_path / "exact", "--dedup", "exact") == 0
    removed = _removed(tmp_path / "exact")
    assert len(removed) == 2 and {frozenset((k, v.split(":", 1)[1])) for k, v in removed.items()} == \
        {frozenset(("d1", "e1")), frozenset(("d8", "e8"))}
    assert _select(dup_pool, tmp_path / "near", "--dedup", "near", "--embedder", f"hf:{encoder}",
                   "--dedup-threshold", str(THRESHOLD)) == 0
    removed = _removed(tmp_path / "near")
    pairs = {frozenset((k, v.split(":", 1)[1])) for k, v in removed.items()}
    assert pairs == {frozenset(p) for p in [("d1", "e1"), ("d8", "e8"), ("d0", "n0"), ("d3", "n3"), ("d6", "n6")]}
    assert all(v.startswith("duplicate_of:") for v in removed.values())
    m = json.loads((tmp_path / "near" / "manifest.json").read_text())
    assert m["counts"]["kept"] == len(DISTINCT) and m["method_info"]["dedup"]["embedder"] == f"hf:{encoder}"


def test_kdata_dedup_near_on_a_curated_text_dataset(dup_pool, encoder, tmp_path, capsys):
    assert _select(dup_pool, tmp_path / "cur", "--dedup", "none") == 0
    assert main(["dedup", str(tmp_path / "cur"), "--level", "near", "--embedder", f"hf:{encoder}",
                 "--dedup-threshold", str(THRESHOLD), "--out", str(tmp_path / "dd"), "--quiet"]) == 0
    rep = json.loads((tmp_path / "dd" / "manifest.json").read_text())
    assert rep["counts"]["n_in"] == 15 and rep["counts"]["kept"] == len(DISTINCT)
    assert rep["dedup"]["removed"] == {"exact": 2, "near": 3}
    capsys.readouterr()
    assert main(["dedup", str(tmp_path / "cur"), "--level", "near", "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--embedder" in err and len(err.splitlines()) == 1


def test_text_near_without_an_embedder_is_one_line(dup_pool, tmp_path, capsys):
    assert _select(dup_pool, tmp_path / "x", "--dedup", "near") == 2
    err = capsys.readouterr().err.strip()
    assert "--embedder" in err and len(err.splitlines()) == 1 and not (tmp_path / "x").exists()


def test_default_recipe_on_text_without_an_embedder_dedups_exact_and_says_near_was_skipped(dup_pool, tmp_path):
    d = text_assets()
    out = tmp_path / "default"
    assert main(["select", "--pool", str(dup_pool), "--teacher", f"hf:{d / 't'}", "--student", f"hf:{d / 's'}",
                 "--budget", "1.0", "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    info = json.loads((out / "manifest.json").read_text())["method_info"]["dedup"]
    assert info["removed"] == {"exact": 2} and "--embedder" in info["near"]
    assert set(_removed(out)) & {"d1", "e1"} and set(_removed(out)) & {"d8", "e8"} and len(_removed(out)) == 2
