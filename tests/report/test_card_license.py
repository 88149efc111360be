"""The card's licence: ``kdata card DIR --license ID`` records it, and a licence set by hand in the card's
front matter — which the card asks for — survives ``kdata card`` rewriting the card; paths the user
gives ``kdata card``/``kdata inspect`` that cannot be written are one line."""

from __future__ import annotations

import json
import shutil

from kdata.report.card_text import read_front_matter
from tests.helpers.cli import kdata


def _licence(d) -> str:
    return read_front_matter((d / "README.md").read_text(encoding="utf-8"))["license"]


def test_a_licence_set_by_hand_or_by_option_survives_a_rewrite(rad_run, tmp_path):
    d = tmp_path / "ds"
    shutil.copytree(rad_run, d)
    assert _licence(d) == "unknown"
    card = d / "README.md"
    card.write_text(card.read_text(encoding="utf-8").replace("license: unknown", "license: cc-by-4.0", 1), encoding="utf-8")
    code, _, err = kdata("card", str(d))
    assert code == 0, err
    assert _licence(d) == "cc-by-4.0" and "`cc-by-4.0`" in card.read_text(encoding="utf-8")
    assert json.loads((d / "manifest.json").read_text())["license"] == "cc-by-4.0"
    code, out, err = kdata("inspect", str(d), "--examples", "0")
    assert code == 0 and "integrity: ok" in out, out + err
    assert kdata("card", str(d), "--license", "mit")[0] == 0 and _licence(d) == "mit"
    assert kdata("card", str(d))[0] == 0 and _licence(d) == "mit"  # kept from the manifest
    code, _, err = kdata("card", str(d), "--license", "CC BY 4.0")
    assert code == 2 and err.count("\n") == 1 and "--license 'CC BY 4.0': expected a licence id" in err, err


def test_an_unwritable_card_dir_or_grid_path_is_one_line_exit_2(rad_run, tmp_path):
    """They ended with a FileNotFoundError line, exit 1."""
    d = tmp_path / "ds"
    shutil.copytree(rad_run, d)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, err = kdata("card", str(d), "--card-dir", str(blocker / "cards"))
    assert code == 2 and err.count("\n") == 1 and "--card-dir" in err and "Error" not in err, err
    code, _, err = kdata("inspect", str(d), "--examples", "0", "--grid", str(blocker / "g.png"))
    assert code == 2 and err.count("\n") == 1 and "--grid" in err and "Error" not in err, err
