"""Options defined once: SelectConfig drives the CLI options, ``--config run.yaml`` and the checks
that run before any work starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdata.cli import build_parser, main
from kdata.core.errors import KdataError
from kdata.pipeline.config import RunOptions, SelectConfig, cli_fields, flag_of, select_config


def _help(cmd: str) -> str:
    sub = next(a for a in build_parser()._actions if a.dest == "command" or getattr(a, "choices", None))
    return sub.choices[cmd].format_help()


def test_every_config_field_is_a_select_option_with_its_default_shown():
    text = " ".join(_help("select").split())
    for cls in (SelectConfig, RunOptions):
        for f in cli_fields(cls):
            assert flag_of(f) in text, f.name
    assert "(default: 0.3)" in text and "(default: builtin:digits-web)" in text


@pytest.mark.parametrize("args,match", [
    (["--budget", "abc"], "--budget 'abc'"),
    (["--budget", "150%"], "--budget 150%: at most 100% of the pool"),
    (["--batch-size", "0"], "--batch-size 0"),
    (["--workers", "-1"], "--workers -1"),
    (["--temperature", "nan"], "--temperature nan"),
    (["--temperature", "-1"], "--temperature -1"),
    (["--temperature", "0"], "--temperature 0"),
    (["--topk", "0"], "--topk 0"),
    (["--topk", "-3"], "--topk -3"),
    (["--rows-per-shard", "0"], "--rows-per-shard 0"),
    (["--rows-per-shard", "-1"], "--rows-per-shard -1"),
    (["--dedup-frac", "0.2"], "--dedup-threshold/--dedup-frac need --dedup"),
    (["--method", "critic"], "--method critic needs a fitted critic"),
    (["--hard", "1000000"], "--hard/--per-sample 1000000: must be an integer from 1 to 256"),
    (["--method", "kd3,kd3"], "kd3 is named twice"),
    (["--critic", "."], "--critic .: --method coverage (the default recipe) has no critic step and --hard is 0"),
    (["--method", "kd3", "--critic-recall", "0.8"], "--critic-recall re-chooses a fitted critic's cut: give --critic"),
    (["--method", "random", "--reference", "builtin:digits-student"],
     "--reference builtin:digits-student: --method random does not use a reference model"),
    (["--teacher", "hf:/nonexistent/lm", "--student", "builtin:digits-student"],
     "--teacher hf:/nonexistent/lm: model directory not found"),
    (["--teacher", f"hf:{__file__}", "--student", "builtin:digits-student"],
     f"--teacher hf:{__file__}: not a directory (an hf: model is the folder save_pretrained wrote)"),
])
def test_bad_options_fail_before_any_work(tmp_path, capsys, monkeypatch, args, match):
    """A fresh cache stays empty: no model is trained or loaded, no pool unit scored."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("KDATA_CACHE", str(cache))
    code = main(["select", "--out", str(tmp_path / "out"), "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2 and match in err and err.count("\n") == 1, err
    assert not (cache / "scores").exists() and not (tmp_path / "out").exists()


def test_config_file_drives_select_and_flags_override_it(tmp_path, builtin_models):
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(yaml.safe_dump({"method": "random", "budget": 40, "seed": 3, "rows_per_shard": 15,
                                        "batch_size": 64}))
    out = tmp_path / "out"
    code = main(["select", "--config", str(run_yaml), "--seed", "4", "--out", str(out), "--quiet", "--json"])
    assert code == 0
    cfg = json.loads((out / "manifest.json").read_text())["config"]
    assert (cfg["method"], cfg["budget"], cfg["seed"], cfg["rows_per_shard"]) == ("random", "40", 4, 15)


def test_config_file_names_the_output_options_too(tmp_path, capsys, builtin_models):
    """``out``, ``no_cache``, ``json`` and ``quiet`` are options too: a run file may hold them; the command
    line wins; without ``--out`` anywhere the run is refused before any work."""
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(yaml.safe_dump({"method": "random", "budget": 25, "out": str(tmp_path / "a"), "json": True,
                                        "quiet": True}))
    capsys.readouterr()
    assert main(["select", "--config", str(run_yaml)]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["kept"] == 25 and (tmp_path / "a" / "manifest.json").is_file()
    assert main(["select", "--config", str(run_yaml), "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "manifest.json").is_file()
    for body, line in (({"method": "random"}, "--out: give the output directory for the curated dataset"),
                       ({"out": "o", "no_cache": "yes"}, f"{run_yaml}: no_cache: expected true or false")):
        run_yaml.write_text(yaml.safe_dump(body))
        capsys.readouterr()
        assert main(["select", "--config", str(run_yaml)]) == 2
        err = capsys.readouterr().err
        assert line in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_config_file_with_unknown_or_mistyped_keys_is_one_line(tmp_path, capsys):
    for body, match in (({"budgett": "0.3"}, "unknown option(s) ['budgett']"),
                        ({"topk": "five"}, "topk = 'five': expected int")):
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(body))
        code = main(["select", "--config", str(path), "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert code == 2 and match in err and str(path) in err and err.count("\n") == 1, err


def test_select_config_checks_types_from_any_source():
    with pytest.raises(Exception, match="expected float"):
        select_config({"temperature": "hot"}, where="flow parameter select")
    assert select_config({"budget": 0.2}).budget == "0.2"


def test_cli_help_is_generated_in_a_subprocess_too():
    out = subprocess.run([sys.executable, "-m", "kdata.cli", "select", "--help"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0 and "--rows-per-shard" in out.stdout and "--config" in out.stdout


@pytest.mark.parametrize("body", [{"workers": 0, "budget": 40}, {"run": {"workers": 0}, "select": {"budget": 40}}])
def test_config_file_takes_the_command_line_names_too(tmp_path, body):
    """``workers`` (the flag ``--workers``) and ``num_workers`` (its field) both work in a config file."""
    from kdata.pipeline.arguments import config_from_args, run_options_from_args

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(body))
    args = build_parser().parse_args(["select", "--config", str(path), "--out", str(tmp_path / "o")])
    assert run_options_from_args(args).num_workers == 0 and config_from_args(args).budget == "40"
    path.write_text(yaml.safe_dump({"workers": 0, "num_workers": 2}))
    with pytest.raises(KdataError, match="workers and num_workers name the same option"):
        run_options_from_args(build_parser().parse_args(["select", "--config", str(path), "--out", "o"]))


@pytest.mark.parametrize("seed", ["1", 1.5, None, True, 2**70])
def test_seed_must_be_an_integer(seed):
    """A string seed hashes to another run than the int, None failed late in the permanent random numbers."""
    from kdata.pipeline.config import validate

    with pytest.raises(KdataError, match=r"^--seed .*: must be an integer") as err:
        validate(SelectConfig(seed=seed))
    assert "\n" not in str(err.value)
    validate(SelectConfig(seed=-3))  # any integer is a seed
    assert build_parser().parse_args(["select", "--seed", "7", "--out", "o"]).seed == 7  # the CLI parses an int


def test_seed_from_a_config_file_must_be_an_integer(tmp_path, capsys):
    for body in ({"seed": None}, {"seed": 1.5}, {"seed": "1"}):
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(body))
        code = main(["select", "--config", str(path), "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert code == 2 and "seed" in err and err.count("\n") == 1, err
        assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("cfg,match", [
    ({"method": "kd3", "method_options": {"kd3": {"treshold": 0.99}}},
     r"^method_options: kd3 has no option 'treshold' \(known: threshold, weight\)$"),
    ({"method": "kd3", "method_options": {"rad": {"threshold": 0.99}}},
     r"^method_options: rad is not in the method chain \(kd3\)$"),
    ({"method": "kd3", "method_options": {"kd3": 0.99}}, r"^method_options: kd3: expected a mapping"),
    ({"method": "critic,kd3", "critic": ".", "method_options": {"kd3": {"alive": 1}}},
     r"^method_options: kd3 has no option 'alive'"),  # what the chain runner passes itself is not an option
    ({"method_options": {"kd3": {"threshold": 0.99}}},  # the default recipe resolves to its chain
     r"^method_options: kd3 is not in the method chain \(coverage: the default recipe\)$"),
    ({"method_options": {"coverage": {"tial": 0.1}}}, r"^method_options: coverage has no option 'tial' \(known: bins, domains, tail\)$"),
])
def test_method_options_are_checked_against_the_chain_before_any_work(cfg, match):
    from kdata.pipeline.config import validate

    with pytest.raises(KdataError, match=match):
        validate(SelectConfig(**cfg))
    validate(SelectConfig(method="kd3", method_options={"kd3": {"threshold": 0.9, "weight": 0.3}}))
    validate(SelectConfig(method_options={"coverage": {"tail": 0.1}}))


def test_method_options_typo_in_a_config_file_is_one_line_and_no_work(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("KDATA_CACHE", str(cache))
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"select": {"method": "kd3", "budget": 300,
                                               "method_options": {"kd3": {"treshold": 0.99}}}}))
    code = main(["select", "--config", str(path), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"{path}: method_options: kd3 has no option 'treshold' (known: threshold, weight)" in err, err
    assert not (cache / "scores").exists() and not (tmp_path / "o").exists()


def test_a_bad_value_from_the_config_file_names_the_file_and_a_flag_names_nothing_else(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"select": {"budget": "150%"}, "run": {"workers": -1}}))
    assert main(["select", "--config", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert capsys.readouterr().err == f"kdata: error: {path}: --budget 150%: at most 100% of the pool (or give a row count)\n"
    assert main(["select", "--config", str(path), "--budget", "0.2", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert capsys.readouterr().err.startswith(f"kdata: error: {path}: --workers -1:")
    path.write_text(yaml.safe_dump({"select": {"budget": "0.2"}}))
    assert main(["select", "--config", str(path), "--budget", "150%", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert capsys.readouterr().err == "kdata: error: --budget 150%: at most 100% of the pool (or give a row count)\n"
    assert not (tmp_path / "o").exists()


def test_one_pool_path_written_two_ways_is_one_run(tmp_path, monkeypatch):
    (tmp_path / "pool").mkdir()
    monkeypatch.chdir(tmp_path)
    a, b, c = SelectConfig(pool="./pool/"), SelectConfig(pool="pool"), SelectConfig(pool=str(tmp_path / "pool"))
    assert a.pool == b.pool == "pool" and a.hash() == b.hash() != c.hash()  # relative stays relative
    assert SelectConfig(pool="gone/").pool == "gone/"  # a path that is not there is left for the pool check


def test_a_path_and_a_numeric_budget_are_the_runs_their_strings_are(tmp_path):
    """From Python, pool=Path(...) and budget=0.1 configure the same run (same dict, same hash) as the
    strings the CLI and a config file give."""
    from pathlib import Path

    from kdata.pipeline.config import SelectConfig

    (tmp_path / "pool").mkdir()
    a = SelectConfig(pool=Path(tmp_path / "pool"), budget=0.1, teacher=Path("t.pt2"))
    b = SelectConfig(pool=str(tmp_path / "pool"), budget="0.1", teacher="t.pt2")
    assert a.to_dict() == b.to_dict() and a.budget == "0.1" and isinstance(a.pool, str)
    assert SelectConfig(budget=200).budget == "200"


def test_configs_take_keywords_only():
    """``SelectConfig("builtin:digits-web", "kd3")`` set teacher="kd3" silently; the configs take keywords."""
    from kdata.pipeline.config import RunOptions, SelectConfig
    from kdata.training.config import TextTrainConfig, TrainConfig

    for make, arg in ((SelectConfig, "builtin:digits-web"), (RunOptions, "cpu"), (TrainConfig, 3), (TextTrainConfig, 3)):
        with pytest.raises(TypeError, match="positional"):
            make(arg)
