"""``TextShards.batches`` on real Parquet shards written from a real teacher (tests/helpers/text_shards.py):
every batch of an epoch equals, tensor for tensor (``torch.equal``), the batches of the previous
row-by-row implementation pinned below, and files are closed when an epoch ends."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from kdata.core.errors import KdataError
from kdata.models.builtin_text import model_dir
from kdata.pools.builtin_text import text_web
from kdata.training.text_data import TextShards
from tests.helpers.text_shards import write_classifier_shards, write_lm_shards

# --- pinned previous implementation (kdata/training/text_data.py before the Arrow rewrite) -----------
# Kept verbatim as the reference the new code must reproduce exactly; do not "fix" it.

def _old_batches(data: TextShards, *, epoch: int):
    rng = np.random.default_rng([data.seed, epoch])
    order = rng.permutation(len(data.groups))
    pending: list[dict] = []
    for gi in order:
        g = data.groups[int(gi)]
        table = pq.ParquetFile(g.path).read_row_group(g.index, columns=data.columns)
        rows = table.to_pylist()
        pending += [rows[int(i)] for i in rng.permutation(len(rows))]
        while len(pending) >= data.batch_size:
            yield _old_collate(data, pending[:data.batch_size])
            pending = pending[data.batch_size:]
    if pending:
        yield _old_collate(data, pending)


def _old_collate(data: TextShards, rows: list[dict]) -> dict:
    if data.kind == "causal_lm":
        return _old_lm_batch(rows, pad_id=data.pad_id, max_length=data.max_length)
    return _old_classifier_batch(rows)


def _old_lm_batch(rows: list[dict], *, pad_id: int, max_length: int | None = None) -> dict:
    seqs = [r["input_ids"][:max_length] if max_length else r["input_ids"] for r in rows]
    length = max(2, max(len(s) for s in seqs))
    k = next((len(r["teacher_topk_ids"][0]) for r in rows if r["teacher_topk_ids"]), 1)
    b = len(rows)
    ids = np.full((b, length), pad_id, dtype=np.int64)
    mask = np.zeros((b, length), dtype=np.int64)
    tk_ids = np.zeros((b, length - 1, k), dtype=np.int64)
    tk_lp = np.full((b, length - 1, k), -30.0, dtype=np.float32)
    rest = np.zeros((b, length - 1), dtype=np.float32)
    valid = np.zeros((b, length - 1), dtype=bool)
    for i, (r, s) in enumerate(zip(rows, seqs)):
        n = len(s)
        ids[i, :n], mask[i, :n] = s, 1
        m = min(n - 1, len(r["teacher_topk_ids"]))
        if m <= 0:
            continue
        tk_ids[i, :m] = np.asarray(r["teacher_topk_ids"][:m], dtype=np.int64)
        tk_lp[i, :m] = np.asarray(r["teacher_topk_logprobs"][:m], dtype=np.float32)
        rest[i, :m] = np.asarray(r["teacher_rest_mass"][:m], dtype=np.float32)
        valid[i, :m] = True
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
            "topk_ids": torch.from_numpy(tk_ids), "topk_logprobs": torch.from_numpy(tk_lp),
            "rest_mass": torch.from_numpy(rest), "valid": torch.from_numpy(valid)}


def _old_classifier_batch(rows: list[dict]) -> dict:
    prob = torch.tensor([r["teacher_topk_prob"] for r in rows], dtype=torch.float32)
    logits = [r.get("teacher_topk_logit") for r in rows]
    logit = (torch.tensor(logits, dtype=torch.float32) if all(x is not None for x in logits)
             else prob.clamp_min(1e-12).log())
    return {"text": [r["text"] or "" for r in rows],
            "topk_idx": torch.tensor([r["teacher_topk_idx"] for r in rows], dtype=torch.long),
            "topk_prob": prob, "topk_logit": logit,
            "labels": torch.tensor([(-1 if r.get("label_idx") is None else r["label_idx"]) for r in rows],
                                   dtype=torch.long)}

# --- end of the pinned previous implementation -------------------------------------------------------


def assert_same_epoch(data: TextShards, *, epoch: int) -> int:
    new, old = list(data.batches(epoch=epoch)), list(_old_batches(data, epoch=epoch))
    assert len(new) == len(old) == data.steps_per_epoch()
    for a, b in zip(new, old):
        assert a.keys() == b.keys()
        for key in b:
            if isinstance(b[key], torch.Tensor):
                assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
            else:
                assert a[key] == b[key], key
    return sum(len(b["text"] if "text" in b else b["input_ids"]) for b in new)


@pytest.fixture(scope="module")
def lm_shards(tmp_path_factory):
    pool = text_web(seed=0)
    texts = [t for t, s in zip(pool.column("text").to_pylist(), pool.column("source").to_pylist()) if s == "clean"]
    out = tmp_path_factory.mktemp("lm") / "curated"
    with torch.inference_mode():  # 2 files of 50 rows, row groups of 16: groups of 16, 16, 16, 2
        return write_lm_shards(out, texts[:100], teacher_dir=model_dir("text-teacher"), max_length=40,
                               files=2, row_group_size=16)


@pytest.fixture(scope="module")
def ragged_lm_shards(lm_shards, tmp_path_factory):
    """The real shards with edge rows: empty and one-token input_ids, no soft labels, soft labels shorter
    than the text, and soft labels longer than input_ids − 1."""
    out = tmp_path_factory.mktemp("ragged") / "data"
    out.mkdir()
    for f in sorted((lm_shards / "data").glob("*.parquet")):
        table = pq.read_table(f)
        rows = table.to_pylist()
        for i, r in enumerate(rows):
            if i % 7 == 0:
                r["input_ids"] = r["input_ids"][:i % 3]  # 0, 1 or 2 tokens
            elif i % 7 == 1:
                r["teacher_topk_ids"], r["teacher_topk_logprobs"], r["teacher_rest_mass"] = [], [], []
            elif i % 7 == 2:
                cut = len(r["teacher_topk_ids"]) // 2
                for c in ("teacher_topk_ids", "teacher_topk_logprobs", "teacher_rest_mass"):
                    r[c] = r[c][:cut]
            elif i % 7 == 3:
                r["input_ids"] = r["input_ids"][:5]
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), out / f.name, row_group_size=9)
    return out.parent


@pytest.mark.parametrize("batch_size", [1, 7, 16, 64, 500])
def test_lm_batches_equal_the_pinned_row_by_row_batches(lm_shards, batch_size):
    data = TextShards(lm_shards, kind="causal_lm", batch_size=batch_size, pad_id=0, seed=3)
    assert len(data.groups) == 8
    for epoch in (0, 1):
        assert assert_same_epoch(data, epoch=epoch) == 100


@pytest.mark.parametrize("max_length", [None, 1, 2, 12])
def test_padding_truncation_and_edge_rows_equal_the_pinned_batches(ragged_lm_shards, max_length):
    data = TextShards(ragged_lm_shards, kind="causal_lm", batch_size=6, pad_id=7, seed=1, max_length=max_length)
    assert assert_same_epoch(data, epoch=2) == 100
    batch = next(data.batches(epoch=2))
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 7).all()
    assert (batch["topk_logprobs"][~batch["valid"]] == -30.0).all() and (batch["rest_mass"][~batch["valid"]] == 0).all()


def test_a_batch_without_any_soft_labels_equals_the_pinned_batch(ragged_lm_shards):
    data = TextShards(ragged_lm_shards, kind="causal_lm", batch_size=3, max_length=1)  # no position used
    assert_same_epoch(data, epoch=0)
    batch = next(data.batches(epoch=0))
    assert batch["topk_ids"].shape[1:] == (1, 8) and not batch["valid"].any()


def _classifier_shards(tmp_path: Path, *, logits: bool) -> Path:
    texts = [f"review {i} " + ("good " if i % 3 else "bad ") * (i % 5) for i in range(70)]
    labels = [None if i % 11 == 0 else i % 2 for i in range(70)]
    probs = [[(i % 10) / 10, 1 - (i % 10) / 10, 0.0] for i in range(70)]
    out = write_classifier_shards(tmp_path / "cls", [t if i % 13 else None for i, t in enumerate(texts)],
                                  labels, probs, k=2)
    if logits:
        f = next((out / "data").glob("*.parquet"))
        table = pq.read_table(f)
        logit = pa.array([[float(np.log(p + 1e-3)) for p in ps] for ps in table.column("teacher_topk_prob").to_pylist()],
                         pa.list_(pa.float32()))
        pq.write_table(table.append_column("teacher_topk_logit", logit), f, row_group_size=32)
    return out


@pytest.mark.parametrize("logits", [False, True])
def test_classifier_batches_equal_the_pinned_batches(tmp_path, logits):
    data = TextShards(_classifier_shards(tmp_path, logits=logits), kind="classifier", batch_size=16, seed=2)
    assert ("teacher_topk_logit" in data.columns) == logits
    assert assert_same_epoch(data, epoch=0) == 70


def _open_shard_fds(root: Path) -> list[str]:
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(root.resolve())):
            fds.append(target)
    return fds


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_a_shard_is_open_only_while_a_row_group_is_read(lm_shards):
    data = TextShards(lm_shards, kind="causal_lm", batch_size=8)
    it = data.batches(epoch=0)
    next(it)
    assert _open_shard_fds(lm_shards) == []  # between batches no shard holds a handle
    it.close()
    assert _open_shard_fds(lm_shards) == []
    list(data.batches(epoch=1))
    assert _open_shard_fds(lm_shards) == []


def test_null_or_ragged_soft_labels_are_one_clear_error(lm_shards, tmp_path):
    table = pq.read_table(next((lm_shards / "data").glob("*.parquet")))
    rows = table.to_pylist()
    rows[3]["teacher_rest_mass"] = None
    (tmp_path / "nulls").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), tmp_path / "nulls" / "a.parquet")
    with pytest.raises(KdataError, match=r"a.parquet: column 'teacher_rest_mass' holds nulls \(row 3\)"):
        list(TextShards(tmp_path / "nulls", kind="causal_lm", batch_size=64).batches(epoch=0))
    rows = table.to_pylist()
    rows[3]["teacher_topk_ids"] = [ids[:3] for ids in rows[3]["teacher_topk_ids"]]
    (tmp_path / "ragged").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), tmp_path / "ragged" / "a.parquet")
    with pytest.raises(KdataError, match=r"a.parquet: column 'teacher_topk_ids' holds top-k lists of another length than 8 .*\(row 3\)"):
        list(TextShards(tmp_path / "ragged", kind="causal_lm", batch_size=64).batches(epoch=0))


def test_eval_rows_without_text_are_skipped_and_counted(tmp_path, capsys):
    """An evaluation JSONL with empty, blank or non-string texts evaluates on the rest and says how many
    rows it skipped (a KdataNote; one line on stderr under the CLI), instead of silently reporting fewer texts."""
    import json

    from kdata.core.warn import KdataNote, shown_as_lines
    from kdata.training.text_data import eval_texts

    rows = [{"text": "a real sentence here"}, {"text": ""}, {"text": "   "}, {"text": 5}, {"other": "x"},
            {"text": "another real sentence"}]
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.warns(KdataNote, match="4 evaluation row"):
        texts, _ = eval_texts(str(path))
    assert texts == ["a real sentence here", "another real sentence"]
    with shown_as_lines():  # as the kdata command shows it
        eval_texts(str(path))
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"kdata: note: {path}: 4 evaluation row(s) without text skipped; evaluating on 2"]


def test_a_missing_eval_set_is_named_as_one(tmp_path):
    from kdata.training.text_data import eval_texts

    with pytest.raises(KdataError, match=r"nosuch.jsonl: evaluation set not found \(no such file or directory\)"):
        eval_texts(str(tmp_path / "nosuch.jsonl"))


def test_shard_dataset_names_text_shards_as_text_not_as_damaged(lm_shards):
    """ShardDataset reads image shards; given causal-LM shards it says what they are and what trains them."""
    from kdata.training.shard_dataset import ShardDataset

    with pytest.raises(KdataError, match="causal lm shards; ShardDataset reads image shards"):
        ShardDataset(lm_shards, input_size=(1, 32, 32), mean=(0.5,), std=(0.5,))
