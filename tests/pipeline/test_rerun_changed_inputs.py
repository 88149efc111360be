"""A rerun into a finished OUT is "already complete" only while the pool holds what the run read and the
embedder has the weights it had: the config hash holds their specs, not their content. A JSONL file added
to a pool directory, a file edited in place or removed, a Parquet directory grown, an image added to a
folder, an embedder replaced in place: each is refused in one line (exit 2) naming what changed, as a
replaced teacher is (tests/cli/test_select_rerun_weights.py). An unchanged pool stays complete, by one
``stat`` per file (``kdata.pipeline.rerun``)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from kdata.cli import main
from kdata.dataset.writer import read_manifest
from kdata.pipeline.rerun import pool_change
from tests.helpers.real_inputs import make_image_folder, make_parquet_units

pytest.importorskip("transformers")

from tests.helpers.text_models import byte_tokenizer, text_assets  # noqa: E402

OLD = 1_600_000_000  # an mtime well before the run (files written just before a run get no stat digest)


def _lines(prefix: str, n: int) -> str:
    return "".join(json.dumps({"sample_id": f"{prefix}{i}", "text": f"{prefix} text number {i} of the pool"}) + "\n"
                   for i in range(n))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    os.utime(path, (OLD, OLD))
    return path


def _text_select(pool, out, *extra) -> list[str]:
    d = text_assets()
    return ["select", "--pool", str(pool), "--teacher", f"hf:{d / 't'}", "--student", f"hf:{d / 's'}",
            "--method", "random", "--budget", "0.5", "--out", str(out), "--device", "cpu", "--json", *extra]


def _image_select(pool, out) -> list[str]:
    return ["select", "--pool", str(pool), "--teacher", "builtin:digits-teacher", "--student",
            "builtin:digits-student", "--method", "kd3", "--budget", "0.5", "--out", str(out), "--device", "cpu",
            "--json"]


def _complete(args, capsys) -> bool:
    capsys.readouterr()
    rc = main(args)
    out = capsys.readouterr().out
    return rc == 0 and json.loads(out)["status"] == "already complete"


def _refused(args, capsys) -> str:
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_a_jsonl_directory_added_to_edited_or_shrunk_is_refused_naming_the_files(tmp_path, capsys):
    pool, out = tmp_path / "pool", tmp_path / "sel"
    pool.mkdir()
    _write(pool / "a.jsonl", _lines("a", 12))
    _write(pool / "b.jsonl", _lines("b", 8))
    args = _text_select(pool, out)
    assert main(args) == 0
    m = read_manifest(out)
    assert m["pool"]["unit_names"] == ["a.jsonl", "b.jsonl"] and m["pool"]["stat_digest"].startswith("sha256:")
    assert _complete(args, capsys)
    before = (out / "manifest.json").read_bytes()

    (pool / "c.jsonl").write_text(_lines("c", 5))  # the pool grows by a file
    err = _refused(args, capsys)
    assert err == (f"kdata: error: {out}: --out holds this run, made from pool {pool} as it was then; since then "
                   "c.jsonl added; choose another directory, or delete it to select again\n")
    (pool / "c.jsonl").unlink()
    assert _complete(args, capsys)

    (pool / "a.jsonl").write_text(_lines("a", 12).replace("text", "TEXT"))  # edited in place, same name
    assert "since then a.jsonl changed;" in _refused(args, capsys)
    (pool / "a.jsonl").write_text(_lines("a", 12))  # the same bytes again (another mtime): as recorded
    assert _complete(args, capsys)

    (pool / "b.jsonl").unlink()
    _write(pool / "d.jsonl", _lines("d", 3))
    assert "since then d.jsonl added, b.jsonl removed;" in _refused(args, capsys)
    assert (out / "manifest.json").read_bytes() == before  # the finished run is left as it was


def test_a_parquet_directory_grown_and_an_image_folder_changed_are_refused(tmp_path, capsys):
    pq_pool = make_parquet_units(tmp_path / "pq", units=1, rows=30)
    args = _image_select(pq_pool, tmp_path / "o-pq")
    assert main(args) == 0 and _complete(args, capsys)
    make_parquet_units(tmp_path / "pq2", units=2, rows=30)
    (tmp_path / "pq2" / "part-1.parquet").rename(pq_pool / "part-1.parquet")  # 30 → 60 rows
    assert "since then part-1.parquet added;" in _refused(args, capsys)

    folder = make_image_folder(tmp_path / "img", n=30)
    args = _image_select(folder, tmp_path / "o-img")
    assert main(args) == 0 and _complete(args, capsys)
    some = sorted(folder.rglob("*.png"))[0]
    os.utime(some)  # touched, same bytes: the stat differs, the content does not
    assert _complete(args, capsys)
    (folder / "3" / "new.png").write_bytes(some.read_bytes())
    assert "as it was then; since then" in _refused(args, capsys)


def test_an_unchanged_pool_is_compared_by_stat_alone(tmp_path, capsys):
    """The rerun's cost on an unchanged pool: one stat per file, no byte read. Shown by what it trusts: a
    file rewritten with other bytes of the same size, its inode and mtime kept, still counts as recorded
    (``kdata.core.digests`` trusts a stat signature the same way)."""
    pool, out = tmp_path / "pool", tmp_path / "sel"
    pool.mkdir()
    f = _write(pool / "a.jsonl", _lines("a", 10))
    assert main(_text_select(pool, out)) == 0
    st = f.stat()
    with open(f, "r+b") as fh:  # same inode, same size
        data = fh.read()
        fh.seek(0)
        fh.write(data.replace(b"number", b"NUMBER"))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    m = read_manifest(out)
    assert pool_change(m) is None
    del m["pool"]["stat_digest"]  # without it, the content fingerprints decide
    assert pool_change(m) is not None


def test_older_manifests_compare_what_they_record(tmp_path, capsys):
    pool, out = tmp_path / "pool", tmp_path / "sel"
    pool.mkdir()
    _write(pool / "a.jsonl", _lines("a", 10))
    args = _text_select(pool, out)
    assert main(args) == 0
    m = read_manifest(out)
    for key in ("unit_names", "stat_digest"):  # as kdata wrote manifests before it recorded them
        del m["pool"][key]
    (out / "manifest.json").write_text(json.dumps(m))
    assert _complete(args, capsys)
    _write(pool / "b.jsonl", _lines("b", 4))
    assert "since then b.jsonl added or changed;" in _refused(args, capsys)
    del m["pool"]["unit_fingerprints"]  # nothing recorded: nothing to compare
    (out / "manifest.json").write_text(json.dumps(m))
    assert _complete(args, capsys)


def _encoder(path: Path, *, seed: int) -> Path:
    """A randomly initialised 1-layer BertModel + byte tokenizer (seeded), saved with save_pretrained."""
    import torch
    from transformers import BertConfig, BertModel

    tok = byte_tokenizer()
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_an_embedder_replaced_in_place_is_refused_by_select_and_dedup(tmp_path, capsys):
    from kdata.models.text_embedder import load_embedder

    emb = _encoder(tmp_path / "emb", seed=0)
    pool = text_assets() / "pool.jsonl"
    near = _text_select(pool, tmp_path / "near", "--dedup", "near", "--embedder", f"hf:{emb}")
    assert main(near) == 0
    recorded = read_manifest(tmp_path / "near")["models"]["embedder"]
    assert recorded == {"spec": f"hf:{emb}", "checksum": load_embedder(f"hf:{emb}").checksum}
    assert main(_text_select(pool, tmp_path / "cur", "--dedup", "none")) == 0
    dedup = ["dedup", str(tmp_path / "cur"), "--level", "near", "--embedder", f"hf:{emb}", "--out",
             str(tmp_path / "dd"), "--json"]
    assert main(dedup) == 0
    assert read_manifest(tmp_path / "dd")["models"]["embedder"] == recorded
    assert _complete(near, capsys) and _complete(dedup, capsys)

    _encoder(emb, seed=1)  # other weights under the same path
    for args, out in ((near, tmp_path / "near"), (dedup, tmp_path / "dd")):
        err = _refused(args, capsys)
        assert f"{out}: --out holds this run, made with embedder hf:{emb} at sha256:" in err
        assert "its weights are now sha256:" in err
    m = read_manifest(tmp_path / "near")
    del m["models"]["embedder"]  # a manifest from before the embedder was recorded: nothing to compare
    (tmp_path / "near" / "manifest.json").write_text(json.dumps(m))
    assert _complete(near, capsys)


def test_a_pool_file_changed_after_the_pool_was_opened_gets_no_stat_digest(tmp_path):
    """The digest is taken when the dataset is written; a file changed after the run opened the pool is not
    what it read, so no digest is recorded and a rerun compares content."""
    from kdata.pipeline.rerun import record_pool_state
    from kdata.pools.spec import open_pool

    pool = tmp_path / "pool"
    pool.mkdir()
    f = _write(pool / "a.jsonl", _lines("a", 10))  # written long before the run
    opened = open_pool(str(pool))
    section: dict = {}
    record_pool_state(section, opened, config={"pool": str(pool)})
    assert "stat_digest" in section  # untouched since it was opened
    now = time.time_ns()
    opened.opened_ns = now - 30 * 10**9  # a run that opened the pool 30 s ago…
    f.write_text(_lines("b", 10))
    os.utime(f, ns=(now - 20 * 10**9, now - 20 * 10**9))  # …and whose pool was edited 10 s into it
    section = {}
    record_pool_state(section, opened, config={"pool": str(pool)})
    assert "stat_digest" not in section and section["unit_names"]
