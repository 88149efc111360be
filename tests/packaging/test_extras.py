"""Packaging: a lean core with optional extras, and one line naming the extra when one is missing."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OPTIONAL = ("prefect", "prefect-dask", "dask", "open-clip-torch", "open_clip_torch", "timm", "faiss-gpu", "fastapi")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True)
    return next(out.glob("kdata-*.whl"))


def _requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return [line.split(":", 1)[1].strip() for line in z.read(meta).decode().splitlines()
                if line.startswith("Requires-Dist:")]


def test_core_install_pulls_no_optional_package(wheel):
    core = [r for r in _requires(wheel) if "extra ==" not in r]
    names = {r.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip().lower() for r in core}
    assert "torch" in names and "pyarrow" in names
    assert not names & set(OPTIONAL), f"optional packages in the core dependencies: {names & set(OPTIONAL)}"
    extras = {r.split("extra ==")[1].strip().strip("'\"") for r in _requires(wheel) if "extra ==" in r}
    assert {"flows", "clip", "timm", "gpu", "dev"} <= extras


def test_wheel_ships_the_flows_and_the_native_kernel(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert {"kdata/flows/curate.py", "kdata/flows/distill.py", "kdata/flows/serve.py",
            "kdata/core/row_stats.c", "kdata/__main__.py", "kdata/flows/config.yaml"} <= names
    licence = next(n for n in names if n.endswith(".dist-info/licenses/LICENSE"))
    with zipfile.ZipFile(wheel) as z:
        assert b"Apache License" in z.read(licence)
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in meta


def test_serve_prints_the_shipped_example_config_and_says_how_when_the_default_is_missing(tmp_path):
    """Installed from a wheel there is no flows/config.yaml: the default's absence says how to write it."""
    from kdata.flows.config import load_config

    proc = subprocess.run([sys.executable, "-m", "kdata", "serve", "--example-config"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout == (ROOT / "flows" / "config.yaml").read_text(), proc.stderr
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "config.yaml").write_text(proc.stdout)
    assert load_config(tmp_path / "flows" / "config.yaml")["curate"]["cron"] == "0 2 * * *"
    (tmp_path / "flows" / "config.yaml").unlink()
    proc = subprocess.run([sys.executable, "-m", "kdata", "serve"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert "kdata serve --example-config > kdata-flows.yaml" in proc.stderr and proc.stderr.count("\n") == 1


def test_python_m_kdata_is_the_kdata_command():
    proc = subprocess.run([sys.executable, "-m", "kdata", "methods", "--json"], capture_output=True, text=True)
    assert proc.returncode == 0 and '"default"' in proc.stdout, proc.stderr


def _without(modules: list[str], *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the kdata CLI in a process where ``modules`` cannot be imported (``sys.modules[m] = None``)."""
    code = ("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules) +
            "from kdata.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=cwd)


def test_serve_without_the_flows_extra_is_one_line(tmp_path):
    (tmp_path / "config.yaml").write_text((ROOT / "flows" / "config.yaml").read_text())
    proc = _without(["prefect", "prefect_dask"], "serve", "--config", "config.yaml", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'kdata[flows]'" in lines[0], proc.stderr


def test_select_runs_without_any_extra(tmp_path, builtin_models):
    proc = _without(["prefect", "prefect_dask", "dask", "distributed", "open_clip", "timm"], "select",
                    "--method", "random", "--budget", "20", "--out", str(tmp_path / "out"), "--quiet",
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "manifest.json").exists()
    assert "prefect" not in proc.stderr.lower()


@pytest.mark.parametrize("blocked,argv,extra", [
    (["open_clip"], ["select", "--teacher", "open_clip:ViT-B-32:openai"], "clip"),
    (["timm"], ["select", "--student", "timm:resnet18:student.pth"], "timm"),
    (["transformers"], ["demo", "--text", "--no-train"], "text"),
    (["transformers"], ["select", "--pool", "builtin:text-web", "--teacher", "builtin:text-teacher", "--student",
                        "builtin:text-student"], "text"),
])
def test_a_model_whose_extra_is_missing_is_one_line_naming_it(tmp_path, blocked, argv, extra):
    proc = _without(blocked, *argv, "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(f"need {blocked[0]}: pip install 'kdata[{extra}]'"), proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("entry", [["-m", "kdata.flows.curate"], [str(ROOT / "flows" / "distill.py")],
                                   [str(ROOT / "flows" / "generate.py")]])
def test_a_flow_run_without_prefect_is_one_line_naming_the_extra(tmp_path, entry):
    """Prefect made unimportable by a meta-path finder (as if not installed) in a real interpreter."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class NoPrefect:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('prefect', 'prefect_dask'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, NoPrefect())\n")
    env = {**__import__("os").environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    proc = subprocess.run([sys.executable, *entry, "--help"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == "kdata: error: the Prefect flows need prefect: pip install 'kdata[flows]'\n"


def test_the_sdist_carries_docs_tests_and_flows_and_its_wheel_no_tests(tmp_path):
    import tarfile

    subprocess.run([sys.executable, "-c", f"from setuptools import build_meta as b; b.build_sdist({str(tmp_path)!r})"],
                   check=True, capture_output=True, cwd=ROOT)
    sdist = next(tmp_path.glob("kdata-*.tar.gz"))
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert {"LICENSE", "mkdocs.yml", "docs/index.md", "tests/conftest.py", "flows/config.yaml",
            "kdata/flows/config.yaml", "benchmarks/quality.py"} <= names
    assert not any("__pycache__" in n for n in names)
