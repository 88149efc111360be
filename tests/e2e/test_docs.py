"""Every command in README.md and docs/ is checked, as torchtune validates its shipped configs.

- ``kdata ...`` lines in ```bash blocks parse with the real CLI parser (``kdata.cli.build_parser``);
- ``python SCRIPT.py ...`` lines name a script that exists and accepts the flags shown (the
  script's own argparse runs on the shown arguments plus ``--help``, so types and choices are
  checked too, and every shown flag must be one the script lists);
- ```python blocks compile and their ``kdata`` imports resolve; ```json sidecars validate;
- inline ``kdata.x.y`` names, ``kdata/…``/``tests/…`` paths (with ``::test``) and relative links
  point at something that exists;
- a cheap subset runs end to end on the built-in pool (``EXECUTED``), and the library's front
  example (the first Python block of docs/index.md) is executed.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import io
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# programs a bash block may call without a check of their own (not kdata's to validate)
OTHER_PROGRAMS = {"pytest", "pip", "prefect", "dask", "export", "cd"}
PYTHON_MODULES = {"mkdocs", "pytest", "pip"}
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def blocks(lang: str) -> list[tuple[str, int, str]]:
    """(page, line, code) of every fenced block tagged ``lang`` (indented fences included)."""
    out = []
    for page in PAGES:
        lines = page.read_text().splitlines()
        i = 0
        while i < len(lines):
            m = FENCE.match(lines[i])
            if not m:
                i += 1
                continue
            indent, tag, start = len(m.group(1)), m.group(2), i + 1
            i += 1
            while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
                i += 1
            if tag == lang:
                out.append((_rel(page), start, "\n".join(line[indent:] for line in lines[start:i])))
            i += 1
    return out


def prose(page: Path) -> str:
    """The page without its fenced blocks."""
    text, keep, inside = page.read_text().splitlines(), [], False
    for line in text:
        if FENCE.match(line) or (inside and re.match(r"^\s*```\s*$", line)):
            inside = not inside
            continue
        if not inside:
            keep.append(line)
    return "\n".join(keep)


def commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every command line in the ```bash blocks (continuations joined, env and output
    redirections stripped)."""
    out = []
    for page, start, code in blocks("bash"):
        joined, first = "", None
        for n, line in enumerate(code.splitlines(), start + 1):
            first = first or n
            if line.rstrip().endswith("\\"):
                joined += line.rstrip()[:-1] + " "
                continue
            argv = shlex.split(joined + line, comments=True)
            while argv and re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0]):
                argv = argv[1:]
            for redirect in (">", ">>"):  # `kdata … > FILE`: the command is what is checked
                if redirect in argv:
                    i = argv.index(redirect)
                    argv = argv[:i] + argv[i + 2:]
            if argv:
                out.append((f"{page}:{first}", argv))
            joined, first = "", None
    return out


COMMANDS = commands()
KDATA = [(w, a) for w, a in COMMANDS if a[0] == "kdata"]
SCRIPTS = [(w, a) for w, a in COMMANDS if a[0] == "python" and a[1].endswith(".py")]


def test_the_docs_have_commands_of_every_kind():
    assert len(KDATA) >= 20 and len(SCRIPTS) >= 10, (len(KDATA), len(SCRIPTS))
    assert blocks("python"), "no Python examples found"


@pytest.mark.parametrize("where,argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_command_is_a_known_program(where, argv):
    prog = argv[0]
    if prog == "python":
        assert argv[1] == "-c" or argv[1].endswith(".py") or (argv[1] == "-m" and argv[2] in PYTHON_MODULES), \
            f"{where}: unchecked python invocation {argv}"
    else:
        assert prog == "kdata" or prog in OTHER_PROGRAMS, f"{where}: unknown program {prog!r} (add a check)"


@pytest.mark.parametrize("where,argv", KDATA, ids=[w for w, _ in KDATA])
def test_kdata_command_parses_with_the_real_cli(where, argv):
    from kdata.cli import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"{where}: `{shlex.join(argv)}` does not parse (exit {exc.code}): {err.getvalue().strip()}")
    assert getattr(args, "func", None), f"{where}: `{shlex.join(argv)}` names no command"


# One child process runs every shown script's own argparse on the shown arguments + --help
# (argparse converts and checks each value as it reads it, then --help exits 0 before any work),
# and every `python -c` line as it is: heavy imports are paid once.
_DRIVER = r"""
import contextlib, io, json, runpy, sys
out = {}
for key, script, args in json.loads(sys.argv[1]):
    buf, err = io.StringIO(), io.StringIO()
    sys.argv = [script or "-c", *args] + (["--help"] if script else [])
    code = 0
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
            if script:
                runpy.run_path(script, run_name="__main__")
            else:
                exec(compile(args[0], key, "exec"), {"__name__": "__main__"})
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:
        code, err = 1, io.StringIO(f"{type(exc).__name__}: {exc}")
    out[key] = {"code": code, "stdout": buf.getvalue(), "err": err.getvalue()[-2000:]}
print(json.dumps(out))
"""
PYTHON_C = [(w, a) for w, a in COMMANDS if a[:2] == ["python", "-c"]]


@pytest.fixture(scope="module")
def child_runs():
    jobs = [(where, argv[1], argv[2:]) for where, argv in SCRIPTS if (ROOT / argv[1]).is_file()]
    jobs += [(where, None, argv[2:3]) for where, argv in PYTHON_C]
    proc = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(jobs)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("where,argv", SCRIPTS, ids=[w for w, _ in SCRIPTS])
def test_script_exists_and_accepts_the_flags_shown(where, argv, child_runs):
    assert (ROOT / argv[1]).is_file(), f"{where}: {argv[1]} does not exist"
    res = child_runs[where]
    assert res["code"] == 0, f"{where}: `{shlex.join(argv)}` is refused: {res['err'].strip()}"
    known = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", res["stdout"]))
    shown = {a.split("=")[0] for a in argv[2:] if re.match(r"^--?[A-Za-z]", a)}
    assert shown <= known, f"{where}: {argv[1]} does not list {sorted(shown - known)}"


@pytest.mark.parametrize("where,code", [(f"{p}:{n}", c) for p, n, c in blocks("python")],
                         ids=[f"{p}:{n}" for p, n, _ in blocks("python")])
def test_python_example_compiles_and_its_kdata_imports_resolve(where, code):
    compile(code, where, "exec")
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "kdata":
            mod = importlib.import_module(node.module)
            missing = [a.name for a in node.names if not hasattr(mod, a.name)
                       and importlib.util.find_spec(f"{node.module}.{a.name}") is None]
            assert not missing, f"{where}: {node.module} has no {missing}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "kdata":
                    importlib.import_module(a.name)


@pytest.mark.parametrize("where,argv", PYTHON_C, ids=[w for w, _ in PYTHON_C])
def test_python_c_commands_run(where, argv, child_runs):
    res = child_runs[where]
    assert res["code"] == 0 and res["stdout"].strip(), f"{where}: `{shlex.join(argv)}` failed: {res['err']}"


def test_json_sidecar_examples_validate():
    from kdata.models.files import validate_sidecar

    found = blocks("json")
    assert found
    for where, line, code in found:
        validate_sidecar(json.loads(code), where=f"{where}:{line}")


def test_pip_extras_shown_exist():
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for where, argv in COMMANDS:
        for arg in argv[1:] if argv[0] == "pip" else []:
            if m := re.search(r"\[([\w,]+)\]", arg):
                assert set(m.group(1).split(",")) <= extras, f"{where}: unknown extra in {arg}"


def _resolve(name: str) -> bool:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def _anchors(page: Path) -> set[str]:
    from markdown.extensions.toc import slugify

    heads = re.findall(r"^#+\s+(.*?)\s*$", prose(page), re.MULTILINE)
    return {slugify(h.replace("`", "").replace("*", ""), "-") for h in heads}


def test_inline_names_paths_and_links_exist():
    bad = []
    for page in PAGES:
        text = prose(page)
        for span in re.findall(r"`([^`\n]+)`", text):
            for name in re.findall(r"(?<![\w.])kdata(?:\.[A-Za-z_]\w*)+", span):
                if not _resolve(name):
                    bad.append(f"{_rel(page)}: `{name}` does not resolve")
            if m := re.fullmatch(r"((?:kdata|tests|benchmarks|flows|docs)/[\w/.-]*)(?:::(\w+))?", span.strip()):
                path, test = ROOT / m.group(1), m.group(2)
                if not path.exists():
                    bad.append(f"{_rel(page)}: `{m.group(1)}` does not exist")
                elif test and not re.search(rf"^def {test}\(", path.read_text(), re.MULTILINE):
                    bad.append(f"{_rel(page)}: {m.group(1)} has no test {test}")
        for link in re.findall(r"\]\(([^)\s]+)\)", text):
            target, _, anchor = link.partition("#")
            if not target or re.match(r"^[a-z]+://", target):
                continue  # in-page anchors and links inside docs/ are checked by mkdocs build --strict
            if not (page.parent / target).exists():
                bad.append(f"{_rel(page)}: link {link} points nowhere")
            elif anchor and anchor not in _anchors(page.parent / target):
                bad.append(f"{_rel(page)}: link {link}: no such heading")
    assert not bad, "\n".join(bad)


def test_docs_named_in_the_code_exist():
    bad = []
    for path in [*(ROOT / "kdata").rglob("*.py"), ROOT / "pyproject.toml"]:
        for ref in re.findall(r"\bdocs/[\w/-]+\.md", path.read_text()):
            if not (ROOT / ref).is_file():
                bad.append(f"{path.relative_to(ROOT)} names {ref}")
    assert not bad, "\n".join(bad)


def test_readme_is_a_short_front_door_with_one_row_per_command():
    from kdata.cli import COMMANDS as CLI

    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    rows = re.findall(r"^\| `kdata (\w+)", text, re.MULTILINE)
    assert rows == CLI, f"README CLI table {rows} != kdata commands {CLI}"
    readme = [shlex.join(a) for w, a in COMMANDS if w.startswith("README.md:")]
    assert readme == ["pip install -e '.[dev]'", "kdata demo --out demo_out", "pytest"], readme


def test_benchmark_tables_are_spliced_into_their_pages(tmp_path):
    import runpy

    splice = runpy.run_path(str(ROOT / "benchmarks" / "doc_tables.py"))["splice"]
    names = set()
    for page in (ROOT / "docs" / "benchmarks").glob("*.md"):
        begins = re.findall(r"^<!-- bench:(\w+):begin -->$", page.read_text(), re.MULTILINE)
        ends = re.findall(r"^<!-- bench:(\w+):end -->$", page.read_text(), re.MULTILINE)
        assert begins == ends == ([page.stem] if begins else []), page
        names.update(begins)
    for name in names:  # the script that measures the table is the one that writes it
        assert re.search(rf'\["splice"\]\("{name}"', (ROOT / "benchmarks" / f"{name}.py").read_text()), name
    page = tmp_path / "x.md"
    page.write_text("intro\n<!-- bench:x:begin -->\nold\n<!-- bench:x:end -->\nafter\n")
    assert splice("x", "| new |", page=page)
    assert page.read_text() == "intro\n<!-- bench:x:begin -->\n| new |\n<!-- bench:x:end -->\nafter\n"
    assert not splice("y", "| new |", page=page)


# Run for real, in this order, in one scratch directory: each must appear verbatim in its page.
EXECUTED = [
    ("docs/cli.md", "kdata select --pool builtin:digits-web --method kd3 --budget 0.1 --out curated-small/"),
    ("docs/cli.md", "kdata inspect curated-small/ --examples 2"),
    ("docs/cli.md", "kdata inspect curated-small/ --json"),
    ("docs/cli.md", "kdata select --config flows/config.yaml --budget 0.1 --out curated-from-config/"),
]


def _shards(out: Path) -> dict[str, str]:
    return {f["path"]: f["sha256"] for f in json.loads((out / "manifest.json").read_text())["files"]}


def test_cheap_commands_and_the_library_example_run(tmp_path, monkeypatch, builtin_models, capsys):
    from kdata.cli import main

    shown = {(w.split(":")[0], shlex.join(a)) for w, a in COMMANDS}
    for page, cmd in EXECUTED:
        assert (page, shlex.join(shlex.split(cmd))) in shown, f"{page} no longer shows `{cmd}`"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "config.yaml").write_text((ROOT / "flows" / "config.yaml").read_text())

    first = [c for p, _, c in blocks("python") if p == "docs/index.md"][0]  # the library's front example
    assert "run_select(" in first, first
    exec(compile(first, "docs/index.md", "exec"), {"__name__": "library"})  # noqa: S102 (running it is the test)
    assert "n_in" in capsys.readouterr().out

    outputs = []
    for page, cmd in EXECUTED:
        rc = main(shlex.split(cmd)[1:])
        outputs.append(capsys.readouterr().out)
        assert rc == 0, f"{page}: `{cmd}` exited {rc}"
    summary = json.loads(outputs[2])
    c = summary["counts"]
    assert c["n_in"] == 1457 and c["kept"] == 145 and c["n_in"] == c["kept"] + c["rejected"] + c["quarantined"]
    assert summary["integrity"]["ok"] is True
    # the library call and the CLI describe the same run: the same bytes
    assert _shards(tmp_path / "curated") == _shards(tmp_path / "curated-small")
    # the config file's select section is the run's config, overridden by the flag given
    import yaml

    from kdata.dataset.writer import verify

    want = yaml.safe_load((tmp_path / "flows" / "config.yaml").read_text())["select"]
    got = json.loads((tmp_path / "curated-from-config" / "manifest.json").read_text())["config"]
    assert {k: got[k] for k in want if k != "budget"} == {k: v for k, v in want.items() if k != "budget"}
    assert got["budget"] == "0.1" and verify(tmp_path / "curated-from-config") == []
