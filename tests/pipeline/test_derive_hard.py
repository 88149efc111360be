"""``kdata dedup`` of a dataset with HARD rows keeps their provenance and their parents.

The derived manifest carries the source's ``hard`` section (``param_names`` is the order of
``hard_params``), generated rows keep a null ``rank``, and a generated row whose parent is removed
as a duplicate goes with it (``parent_removed``): no kept row names a parent outside the dataset,
every ``duplicate_of`` names a kept row, and the counts add up (``kdata inspect`` verifies them).
Real image folder with planted copies, the built-in models, real runs through ``kdata.cli.main``.
"""

from __future__ import annotations

import json
import shutil

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from kdata.cli import main
from kdata.dataset.writer import verify
from tests.helpers.real_inputs import make_image_folder


@pytest.fixture(scope="module")
def hard_with_copies(tmp_path_factory, builtin_models):
    """A --hard 1 selection that kept planted exact copies (no dedup at select time)."""
    root = tmp_path_factory.mktemp("derive-hard")
    pool = make_image_folder(root / "pool", n=40)
    for f in sorted(pool.rglob("*.png"))[:6]:  # byte-identical copies under other names
        shutil.copyfile(f, f.with_name(f.stem + "_copy.png"))
    out = root / "sel"
    assert main(["select", "--pool", str(pool), "--method", "random", "--budget", "1.0", "--dedup", "none",
                 "--hard", "1", "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    return out


def _manifest(path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_dedup_of_a_hard_dataset_keeps_provenance_and_removes_orphans(hard_with_copies, tmp_path, capsys):
    src, out = hard_with_copies, tmp_path / "dedup"
    sm = _manifest(src)
    assert sm["counts"]["generated_kept"] > 0
    assert main(["dedup", str(src), "--level", "exact", "--out", str(out), "--quiet"]) == 0
    m = _manifest(out)
    # provenance: how the synthetic rows were made, and what they are now
    hard = m["hard"]
    assert hard["param_names"] == sm["hard"]["param_names"] and hard["bounds"] == sm["hard"]["bounds"]
    assert hard["critic"] == sm["hard"]["critic"] and hard["config"] == sm["hard"]["config"]
    assert hard["source_counts"] == sm["hard"]["counts"] and "counts" not in hard
    rows = pq.read_table(out / "data")
    synth = rows.filter(pc.equal(rows.column("kind"), "synthetic"))
    orig = rows.filter(pc.equal(rows.column("kind"), "original"))
    assert hard["rows"]["synthetic"] == sm["counts"]["generated_kept"]
    assert hard["rows"]["kept"] == synth.num_rows
    assert hard["rows"]["removed"] == sum(hard["rows"]["removed_by_reason"].values())
    # ranks: renumbered over the originals, null for generated rows
    assert synth.column("rank").null_count == synth.num_rows
    assert sorted(orig.column("rank").to_pylist()) == list(range(orig.num_rows))
    # parents: every kept generated row's parent is kept; the children of removed copies went with them
    kept_ids = set(rows.column("sample_id").to_pylist())
    assert set(synth.column("parent_id").to_pylist()) <= kept_ids
    dec = pq.read_table(out / "decisions.parquet").to_pylist()
    by_id = {d["sample_id"]: d for d in dec}
    removed = [d for d in dec if d["decision"] == "rejected"]
    dups = [d for d in removed if d["reason"].startswith("duplicate_of:")]
    orphans = [d for d in removed if d["reason"] == "parent_removed"]
    assert dups and orphans and len(dups) + len(orphans) == len(removed)
    assert all(d["reason"].split(":", 1)[1] in kept_ids for d in dups)
    parents = dict(zip(*(pq.read_table(src / "data", columns=["sample_id", "parent_id"]).column(c).to_pylist()
                         for c in ("sample_id", "parent_id"))))
    removed_originals = {d["sample_id"] for d in dups if "#hard" not in d["sample_id"]}
    assert removed_originals and {d["sample_id"] for d in orphans} == \
        {s for s, p in parents.items() if p in removed_originals}
    assert all(by_id[d["sample_id"]]["stage"] == "dedup" for d in orphans)
    # counts add up, the dataset verifies and inspect says so
    c = m["counts"]
    assert c["n_in"] == sm["counts"]["kept"] + sm["counts"]["generated_kept"] == len(dec)
    assert c["kept"] == rows.num_rows and c["n_in"] == c["kept"] + c["rejected"]
    assert c["rejected_by_reason"] == {"duplicate_of": len(dups), "parent_removed": len(orphans)}
    assert "generated" not in c and verify(str(out)) == []
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["integrity"]["ok"] and s["decisions"]["generated"] == 0
    assert "HARD augmentation: 1 generated samples requested per original row." in (out / "README.md").read_text()


def test_dedup_of_a_deduplicated_hard_dataset_carries_the_provenance_again(hard_with_copies, tmp_path):
    assert main(["dedup", str(hard_with_copies), "--level", "exact", "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert main(["dedup", str(tmp_path / "a"), "--level", "near", "--out", str(tmp_path / "b"), "--quiet"]) == 0
    m = _manifest(tmp_path / "b")
    assert m["hard"]["source_counts"] == _manifest(hard_with_copies)["hard"]["counts"]  # carried twice
    assert verify(str(tmp_path / "b")) == []
