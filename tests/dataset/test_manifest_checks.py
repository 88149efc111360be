"""A hand-edited manifest: fields of the wrong type, or provenance that disagrees with the shards' Arrow
``kdata`` metadata or with its own config, fail the integrity check with one line naming the manifest
and the field (they crashed ``kdata inspect``/``kdata card`` or passed as "integrity: ok").

Real runs only: ``kdata select`` on the built-in pool (``demo_run``), ``--hard 1``, and ``kdata dedup``.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest

from kdata.cli import main
from kdata.dataset.writer import MANIFEST, verify
from kdata.pipeline.config import RunOptions, SelectConfig
from kdata.pipeline.run import run_select


@pytest.fixture(scope="module")
def derived_runs(tmp_path_factory, demo_run, builtin_models) -> dict[str, Path]:
    """``kdata select --hard 1`` and ``kdata dedup`` of ``demo_run``."""
    base = tmp_path_factory.mktemp("manifest-checks")
    run_select(SelectConfig(method="kd3", budget="30", hard=1), out=str(base / "hard"), opts=RunOptions(device="cpu"))
    assert main(["dedup", str(demo_run), "--level", "exact", "--out", str(base / "dedup"), "--quiet"]) == 0
    return {"hard": base / "hard", "dedup": base / "dedup"}


def _edited(src: Path, tmp_path: Path, edit) -> Path:
    out = tmp_path / "edited"
    shutil.copytree(src, out)
    m = json.loads((out / MANIFEST).read_text())
    edit(m)
    (out / MANIFEST).write_text(json.dumps(m))
    return out


def _set(path: str, value):
    def edit(m):
        *parents, last = path.split(".")
        for p in parents:
            m = m[p]
        m[last] = value
    return edit


def _one_line_naming(problems: list[str], out: Path, field: str) -> None:
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{out / MANIFEST}: ") and f"'{field}'" in problems[0] and "\n" not in problems[0]


WRONG_TYPES = [("counts.kept", "145", "counts"), ("class_names", 5, "class_names"), ("models", [1], "models"),
               ("pool", "x", "pool"), ("config", [1], "config"), ("created_unix", "yesterday", "created_unix"),
               ("methods", "kd3", "methods"), ("seed", "x", "seed"), ("topk", "five", "topk"),
               ("budget_rows", "lots", "budget_rows"), ("models.teacher", 3, "models.teacher"),
               ("class_names", [0, 1], "class_names"), ("files", [1], "files")]


@pytest.mark.parametrize("path,value,field", WRONG_TYPES, ids=[f"{p}={v!r}" for p, v, _ in WRONG_TYPES])
def test_a_field_of_the_wrong_type_is_one_line_and_card_refuses(path, value, field, demo_run, tmp_path, capsys):
    out = _edited(demo_run, tmp_path, _set(path, value))
    _one_line_naming(verify(out), out, field)
    capsys.readouterr()
    assert main(["card", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "integrity check failed" in err and f"'{field}'" in err and "Error:" not in err


@pytest.mark.parametrize("path,value", [("methods", "kd3"), ("seed", "x"), ("topk", "five"), ("budget_rows", "lots"),
                                        ("class_names", 5), ("models", [1]), ("pool", "x"), ("counts.kept", "145")])
def test_inspect_exits_1_with_one_line_naming_the_field(path, value, demo_run, tmp_path, capsys):
    field = path.split(".")[0]
    """Nothing is summarised from a manifest field of the wrong type (class_names=5, models=[1], pool="x",
    counts.kept="145" crashed the summary with a TypeError/AttributeError line)."""
    out = _edited(demo_run, tmp_path, _set(path, value))
    for json_flag in ([], ["--json"]):
        capsys.readouterr()
        rc = main(["inspect", str(out), "--examples", "0", *json_flag])
        cap = capsys.readouterr()
        assert rc == 1 and cap.out == "", cap.out
        err = cap.err.strip()
        assert "\n" not in err and "integrity: FAILED" in err and f"'{field}'" in err and "Error" not in err, err


def _teacher(m):
    m["models"]["teacher"]["spec"] = m["config"]["teacher"] = "timm:vit_huge_patch14_224"


def _pool(m):
    m["pool"]["spec"] = m["config"]["pool"] = "hf:imagenet"


def _class_names(m):
    m["class_names"][:2] = ["a", "b"]


TAMPERED = [(_teacher, "models.teacher.spec"), (_pool, "config_hash"), (_set("methods", ["rad"]), "methods"),
            (_class_names, "class_names"), (_set("models.student.spec", "builtin:other"), "models.student.spec"),
            (_set("config.seed", 7), "config_hash"),
            (_set("topk", 3), "topk"), (_set("config_hash", "0" * 64), "config_hash")]


@pytest.mark.parametrize("edit,field", TAMPERED, ids=[f for _, f in TAMPERED])
def test_tampered_provenance_is_one_line_naming_the_field(edit, field, demo_run, tmp_path):
    out = _edited(demo_run, tmp_path, edit)
    _one_line_naming(verify(out), out, field)


def test_runs_kdata_writes_still_verify(demo_run, derived_runs):
    assert verify(demo_run) == []
    for out in derived_runs.values():
        assert verify(out) == [], out


@pytest.mark.parametrize("which", ["hard", "dedup"])
def test_tampered_teacher_of_hard_and_dedup_runs_is_caught(which, derived_runs, tmp_path):
    out = _edited(derived_runs[which], tmp_path, _teacher)
    _one_line_naming(verify(out), out, "models.teacher.spec")
    out2 = _edited(derived_runs[which], tmp_path / "b", _set("config.seed", 7))
    _one_line_naming(verify(out2), out2, "config_hash")
