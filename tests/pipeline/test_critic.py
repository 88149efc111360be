"""The critic as library functions (``kdata.pipeline.critic``): fit on a labelled sample of the built-in
pool, apply to the whole pool; every row of the pool is in the applied table once, and the CLI prints
what the functions return."""

from __future__ import annotations

import csv
import json

import pyarrow.parquet as pq
import pytest

from kdata.cli import main
from kdata.core.errors import KdataError
from kdata.pipeline.critic import CriticSource, apply_critic_to, fit_critic_on
from kdata.pools.builtin import digits_web_truth

GOOD = {"clean", "near_dup", "exact_dup"}


@pytest.fixture(scope="module")
def labels(tmp_path_factory):
    """400 labelled rows of builtin:digits-web: accept the rows the ground truth calls good."""
    truth = digits_web_truth().to_pylist()[:400]
    path = tmp_path_factory.mktemp("critic-lib") / "labels.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sample_id", "accept"])
        w.writerows([r["sample_id"], int(r["truth"] in GOOD)] for r in truth)
    return path


def test_fit_then_apply_accounts_for_every_row_and_matches_the_cli(builtin_models, labels, tmp_path, capsys):
    src = CriticSource("builtin:digits-web", device="cpu")
    fitted = fit_critic_on(src, labels=str(labels), out=str(tmp_path / "critic"), recall=0.8)
    assert fitted["n_labelled"] == 400 and fitted["n_missing"] == fitted["n_quarantined"] == 0
    assert 0 < fitted["n_accept"] < 400 and 0.0 < fitted["threshold"] < 1.0
    assert (tmp_path / "critic" / "critic.npz").is_file()

    applied = apply_critic_to(src, critic=str(tmp_path / "critic"), out=str(tmp_path / "applied.parquet"))
    table = pq.read_table(tmp_path / "applied.parquet")
    assert table.num_rows == applied["n"] == 1457 == applied["scored"] + applied["quarantined"]
    assert len(set(table.column("sample_id").to_pylist())) == 1457
    assert sum(table.column("accept").to_pylist()) == applied["accepted"]
    assert set(table.column("reason").drop_null().to_pylist()) <= {"critic_reject"}

    # the same apply from the command line: the same table, and the JSON is what the function returned
    capsys.readouterr()
    assert main(["critic", "apply", str(tmp_path / "critic"), "--scores-from", "builtin:digits-web",
                 "--out", str(tmp_path / "cli.parquet"), "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {**applied, "out": str(tmp_path / "cli.parquet")}
    assert pq.read_table(tmp_path / "cli.parquet").equals(table)


def test_apply_names_its_output_format_before_any_work(tmp_path):
    with pytest.raises(KdataError, match=r"^--out x\.json: expected a \.csv or \.parquet file name"):
        apply_critic_to(CriticSource("builtin:digits-web"), critic=str(tmp_path / "none"), out="x.json")
