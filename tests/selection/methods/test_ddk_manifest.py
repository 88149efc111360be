"""DDK's per-domain info is bounded: a pool of many domains (web hosts) lists the ``MAX_LISTED_DOMAINS``
with the largest proportion and sums the rest, so the manifest and the card stay small."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq

from kdata.cli import main
from kdata.selection.methods.ddk import MAX_LISTED_DOMAINS, domain_info
from tests.helpers.methods import write_predictions


def test_domain_info_lists_the_largest_proportions_and_sums_the_rest():
    names = np.array(["a", "b", "c", "d", "e"], dtype=object)
    ratio, r = np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.array([0.1, 0.3, 0.2, 0.3, 0.1])
    quota, taken = np.array([1, 3, 2, 3, 1]), np.array([1, 2, 2, 3, 0])
    full = domain_info(names, ratio, r, quota, taken)
    assert list(full) == ["domains"] and list(full["domains"]) == ["a", "b", "c", "d", "e"]  # few: all, as before
    assert full["domains"]["b"] == {"perplexity_ratio": 2.0, "proportion": 0.3, "quota": 3, "kept": 2}
    capped = domain_info(names, ratio, r, quota, taken, limit=3)
    assert list(capped["domains"]) == ["b", "c", "d"]  # by proportion; "a" and "e" tie below, by name
    assert capped["domains"]["d"] == full["domains"]["d"] and capped["domains_total"] == 5
    assert capped["other_domains"] == {"count": 2, "proportion": 0.2, "quota": 2, "kept": 1,
                                       "perplexity_ratio": {"min": 1.0, "max": 5.0}}


def test_many_domains_keep_the_manifest_small(tmp_path):
    rng = np.random.default_rng(0)
    n, hosts = 3000, 400
    t = rng.normal(size=(n, 3)) * 3
    write_predictions(tmp_path / "p.parquet", t, t + rng.normal(size=(n, 3)) * 2,
                      domain=[f"host{i % hosts:04d}.example" for i in range(n)])
    out = tmp_path / "o"
    assert main(["select", "--scores", str(tmp_path / "p.parquet"), "--method", "ddk", "--budget", "0.2",
                 "--out", str(out), "--quiet"]) == 0
    info = json.loads((out / "manifest.json").read_text())["method_info"]["ddk"]
    assert len(info["domains"]) == MAX_LISTED_DOMAINS and info["domains_total"] == hosts
    assert info["other_domains"]["count"] == hosts - MAX_LISTED_DOMAINS
    kept = pq.read_table(out / "decisions.parquet").column("decision").to_pylist().count("kept")
    assert sum(d["kept"] for d in info["domains"].values()) + info["other_domains"]["kept"] == kept == 600
    listed = min(d["proportion"] for d in info["domains"].values())
    assert info["other_domains"]["proportion"] <= listed * (hosts - MAX_LISTED_DOMAINS)
    assert (out / "manifest.json").stat().st_size < 40_000 and "domains_total: 400" in (out / "README.md").read_text()


def test_a_capped_domain_list_fed_back_as_previous_shares_the_rest_evenly():
    """``previous=`` from a manifest that lists 3 of 5 domains: the 2 it does not name share the mass
    the listed ones leave (they got a prior of 0 before)."""
    from kdata.selection.methods.ddk import _previous

    names = np.array(["a", "b", "c", "d", "e"], dtype=object)
    listed = {"b": 0.3, "c": 0.2, "d": 0.3}
    np.testing.assert_allclose(_previous(listed, names), [0.1, 0.3, 0.2, 0.3, 0.1])
    whole = {"a": 0.1, "b": 0.3, "c": 0.2, "d": 0.3, "e": 0.1}
    np.testing.assert_allclose(_previous(whole, names), [0.1, 0.3, 0.2, 0.3, 0.1])  # as before
