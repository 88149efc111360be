"""One CLI convention: the dataset directory is positional, old flags still work (with a note),
every option has help and shows its default, `kdata methods` lists the methods, messages use the
user's words, and output in a pipe is whole and free of progress bars."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from kdata.cli import build_parser, main
from tests.helpers.cli import kdata

HIDDEN_ALIASES = {"--shards", "--dedup"}  # kept for a release, hidden from --help


def run_cli(*args):
    """The real console entry point in a subprocess, stdout and stderr pipes: (exit code, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "kdata.cli", *args], capture_output=True, text=True,
                       env=dict(os.environ), timeout=300, check=False)
    return p.returncode, p.stdout, p.stderr


def _commands(parser, prefix=()):
    """(name, parser) of every command and sub-command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _commands(sub, (*prefix, name))


def _shown_help(parser, action) -> str:
    fmt = parser.formatter_class(prog=parser.prog)
    fmt.add_argument(action)
    return " ".join(fmt.format_help().split())


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, builtin_models):
    """A 10% curation of the built-in pool, written by the real CLI."""
    out = tmp_path_factory.mktemp("small") / "curated"
    assert main(["select", "--budget", "0.1", "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    return out


def test_every_command_has_a_description_and_every_option_help_and_its_default():
    commands = list(_commands(build_parser()))
    assert {"select", "methods", "inspect", "demo", "train", "dedup", "augment", "card"} <= {c[0] for c, _ in commands}
    problems = []
    for name, p in commands:
        if not (p.description or "").strip() and not any(isinstance(a, argparse._SubParsersAction)
                                                         for a in p._actions):
            problems.append(f"kdata {' '.join(name)}: no description")
        for a in p._actions:
            if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            flag = a.option_strings[0] if a.option_strings else a.dest
            if a.help == argparse.SUPPRESS:
                if not set(a.option_strings) <= HIDDEN_ALIASES:
                    problems.append(f"kdata {' '.join(name)} {flag}: hidden")
                continue
            if not (a.help or "").strip():
                problems.append(f"kdata {' '.join(name)} {flag}: no help")
            elif a.option_strings and a.nargs != 0 and not a.required and "default" not in _shown_help(p, a) \
                    and not a.help.startswith("required"):  # required, checked after parsing (an alias beside it)
                problems.append(f"kdata {' '.join(name)} {flag}: default not shown")
    assert not problems, "\n".join(problems)


def test_help_of_the_real_cli_shows_defaults_and_hides_the_old_flags():
    code, out, _ = run_cli("demo", "--help")
    text = " ".join(out.split())
    assert code == 0 and re.search(r"--budget BUDGET .*\(default: 0\.3\)", text)
    assert re.search(r"--seed SEED [a-z][^-]*\(default: 0\)", text) and "--quiet no progress bars" in text
    code, out, _ = run_cli("train", "--help")
    text = " ".join(out.split())
    assert "usage: kdata train [-h] [--student STUDENT]" in text and "DIR" in text and "--shards" not in text
    assert "--epochs EPOCHS passes over the shards (default: 12; text students: 6)" in text
    code, out, _ = run_cli("dedup", "--help")
    assert "--level {exact,near,semantic}" in out and "--dedup " not in out and "--quiet" in out


def test_help_of_every_command_loads_neither_torch_nor_the_pipeline():
    """`kdata --help` and `kdata COMMAND --help` answer at once: building the parser imports no torch
    (its defaults come from torch-free config modules), and a bad option is refused the same way."""
    code = ("import sys\nfrom kdata.cli import build_parser\np = build_parser()\n"
            "for argv in [['--help']] + [[c, '--help'] for c in sys.argv[1:]]:\n"
            "    try:\n        p.parse_args(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('transformers', 'prefect'))))")
    commands = sorted(build_parser()._subparsers._group_actions[0].choices)
    assert {"select", "train", "demo", "generate"} <= set(commands)
    p = subprocess.run([sys.executable, "-c", code, *commands], capture_output=True, text=True, check=True)
    assert p.stdout.strip().splitlines()[-1] == "[]", p.stdout[-300:]


def test_methods_lists_every_registered_method_with_its_kind_and_paper():
    from kdata.selection.methods import available

    code, out, err = run_cli("methods")
    assert code == 0, err
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()}
    for name, m in available().items():
        assert m.kind in lines[name]
        paper = re.search(r"arXiv (\d{4}\.\d{4,5})", m.doc)
        assert (f"arXiv {paper.group(1)}" if paper else "baseline") in lines[name]
    assert "[arXiv 2307.11469]" in lines["kd3"] and "[arXiv 2210.01213]" in lines["rad"]
    assert lines["default"].split()[1] == "recipe"
    code, out, _ = run_cli("methods", "--json")
    assert {r["name"] for r in json.loads(out)["methods"]} == {*available(), "default"}
    code, out, _ = run_cli("select", "--help")
    assert "kdata methods" in out and "teacher_confidence" in out  # --method's help lists them


def test_budget_over_the_pool_is_said_in_the_users_words(tmp_path, builtin_models, capsys):
    assert main(["select", "--budget", "150%", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == "kdata: error: --budget 150%: at most 100% of the pool (or give a row count)\n"
    assert main(["select", "--budget", "1.5", "--out", str(tmp_path / "o")]) == 2
    assert "--budget 1.5: a fraction of the pool is at most 1.0 (or give a row count)" in capsys.readouterr().err


def test_inspect_in_a_pipe_does_not_truncate_column_names(small_run):
    code, out, err = run_cli("inspect", str(small_run))
    assert code == 0, err
    assert "teacher_conf" in out and "student_entropy" in out and "…" not in out
    assert max(len(line) for line in out.splitlines()) > 80  # wider than rich's 80-column guess


def test_dedup_takes_the_dataset_positionally_with_level_quiet_and_time(small_run, tmp_path):
    code, out, err = kdata("dedup", str(small_run), "--level", "exact", "--out", str(tmp_path / "a"), "--quiet")
    assert code == 0 and err == "", err
    assert "removed at exact" in out and re.search(r"^\s+\d+\.\ds$", out, re.MULTILINE)
    # the old spelling still works, with one note per old flag, and writes the same dataset
    code, _, err = kdata("dedup", "--shards", str(small_run), "--dedup", "exact", "--out", str(tmp_path / "b"))
    assert code == 0, err
    notes = err.strip().splitlines()
    assert len(notes) == 2 and all(n.startswith("kdata: note:") and "deprecated" in n for n in notes)
    assert f"kdata dedup {small_run}" in notes[0] and "--level exact" in notes[1]
    files = [{f["path"]: f["sha256"] for f in json.loads((tmp_path / d / "manifest.json").read_text())["files"]}
             for d in "ab"]
    assert files[0] == files[1]
    code, _, err = kdata("dedup", "--out", str(tmp_path / "c"), "--level", "near")
    assert code == 2 and err == "kdata: error: kdata dedup: give the dataset directory: kdata dedup DIR …\n"
    code, _, err = kdata("dedup", str(small_run), "--out", str(tmp_path / "c"))
    assert code == 2 and "give --level exact, near or semantic" in err and not (tmp_path / "c").exists()


def test_augment_and_train_take_the_dataset_positionally(small_run, tmp_path):
    code, out, err = kdata("augment", str(small_run), "--steps", "1", "--out", str(tmp_path / "aug"), "--quiet")
    assert code == 0 and err == "", err
    manifest = json.loads((tmp_path / "aug" / "manifest.json").read_text())
    assert manifest["counts"]["n_in"] == 145 and "generated" in out
    args = build_parser().parse_args(["augment", "--shards", "X", "--out", "Y"])
    assert args.shards_alias == "X" and args.dir is None
    # train: positional, and in a pipe no progress output at all on stderr
    code, out, err = kdata("train", str(small_run), "--epochs", "1", "--out", str(tmp_path / "st"))
    assert code == 0 and all(line.startswith("kdata: warning: ") for line in err.splitlines()), err  # no progress
    assert (tmp_path / "st" / "student.pt2").is_file() and "before training" in out


def test_critic_apply_reads_its_critic_positionally():
    args = build_parser().parse_args(["critic", "apply", "crit/", "--scores-from", "builtin:digits-web",
                                      "--out", "a.csv"])
    assert args.critic == "crit/"


@pytest.mark.parametrize("command", ["inspect", "card"])
def test_inspect_and_card_still_take_the_old_shards_spelling(small_run, tmp_path, capsys, command):
    """docs/cli.md: ``--shards DIR`` still works for the commands that read a dataset, with one note."""
    data = tmp_path / "curated"
    shutil.copytree(small_run, data)
    capsys.readouterr()
    assert main([command, "--shards", str(data), "--json"]) == 0
    out, err = capsys.readouterr()
    assert err == f"kdata: note: --shards is deprecated; write `kdata {command} {data} …`\n"
    assert json.loads(out)
    assert main([command, str(data), "--shards", str(small_run)]) == 2
    assert "give the dataset directory once" in capsys.readouterr().err
    assert main([command]) == 2
    err = capsys.readouterr().err
    assert err == f"kdata: error: kdata {command}: give the dataset directory: kdata {command} DIR …\n"
    p = next(sub for name, sub in _commands(build_parser()) if name == (command,))
    assert "--shards" not in p.format_help()


def test_inspect_refuses_a_negative_example_count(small_run, capsys):
    capsys.readouterr()
    assert main(["inspect", str(small_run), "--examples", "-3"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "kdata: error: --examples -3: must be a whole number ≥ 0 (example rows per table)\n"
    assert main(["inspect", str(small_run), "--examples", "0", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["examples"] == [] and s["rejected_examples"] == []
