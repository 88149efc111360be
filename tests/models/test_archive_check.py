"""Zip bombs and opcode floods in model archives cost bounded memory and time (review sec2, items 1, 2, 7).

Real archives: ``.pt2`` written by ``torch.export.save`` and TorchScript ``.pt`` by ``torch.jit.save``
(through ``kdata.models.files.export_model``) and a ``torch.save`` state dict, each with one member
replaced or added with ``zipfile``. Each hostile file is a few hundred KB on disk and declares
hundreds of MB; it is refused with one line naming the file, and the refusal's peak memory growth
(``VmHWM`` of a fresh process) stays small. Real exports still load.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from kdata.cli import main
from kdata.core.errors import KdataError
from kdata.models.spec import load_model
from tests.helpers.real_inputs import exported_models, make_image_folder

ROOT = Path(__file__).resolve().parents[2]
DECLARED = 200 << 20  # bytes a bomb member expands to
BOUND_MIB = 64  # peak growth allowed while refusing it


def _replace(src: str | Path, dst: Path, rel: str, chunks, *, compress=zipfile.ZIP_DEFLATED) -> Path:
    """Copy a torch archive, streaming ``chunks`` into member ``<root>/rel`` (replaced or added)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = zin.namelist()[0].split("/", 1)[0]
        for info in zin.infolist():
            if info.filename != f"{root}/{rel}":
                zout.writestr(info, zin.read(info))
        zi = zipfile.ZipInfo(f"{root}/{rel}")
        zi.compress_type = compress
        with zout.open(zi, "w", force_zip64=True) as w:
            for chunk in chunks:
                w.write(chunk)
    side = Path(src).with_suffix(".json")
    if side.exists():
        shutil.copy(side, dst.with_suffix(".json"))
    return dst


def _fill(head: bytes, byte: bytes, total: int, tail: bytes = b""):
    yield head
    block = byte * (1 << 20)
    for _ in range(total // len(block)):
        yield block
    yield tail


def _peak(check: str, path: Path) -> tuple[str, int]:
    """Run ``kdata.models.archive_check.<check>(path)`` in a fresh process: (its refusal, peak MiB growth)."""
    code = f"""
import kdata.models.archive_check as ac
from kdata.core.errors import KdataError
def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
before = hwm()
msg = "accepted"
try:
    ac.{check}(__import__("pathlib").Path({str(path)!r}))
except KdataError as exc:
    msg = "refused " + str(exc)
print(msg.replace(chr(10), "\\\\n"))
print((hwm() - before) // 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    msg, mib = out.stdout.strip().split("\n")[-2:]
    return msg, int(mib)


def _assert_bounded_refusal(check: str, path: Path) -> None:
    msg, mib = _peak(check, path)
    assert msg.startswith("refused ") and str(path) in msg and "\\n" not in msg, msg
    assert mib < BOUND_MIB, f"refusing {path.name} ({path.stat().st_size} bytes) grew the peak by {mib} MiB"


@pytest.fixture(scope="module")
def models():
    return exported_models()


def test_a_compressed_pt2_member_declaring_hundreds_of_mb_is_refused_without_reading_it(tmp_path, models):
    bomb = _replace(models["teacher_pt2"], tmp_path / "af_bomb.pt2", "archive_format", _fill(b"pt2", b" ", DECLARED))
    assert bomb.stat().st_size < 2 << 20
    _assert_bounded_refusal("check_pt2_archive", bomb)


def test_a_repeated_graph_json_bomb_is_refused_within_bounded_memory(tmp_path, models):
    bomb = _replace(models["teacher_pt2"], tmp_path / "graph_bomb.pt2", "models/model.json",
                    _fill(b"[", b"{},", 40 << 20, b"{}]"))
    assert bomb.stat().st_size < 1 << 20
    _assert_bounded_refusal("check_pt2_archive", bomb)


def test_a_torchscript_code_member_bomb_is_refused_within_bounded_memory(tmp_path, models):
    with zipfile.ZipFile(models["teacher_pt"]) as zf:
        code = next(n for n in zf.namelist() if "/code/" in n and n.endswith(".py"))
        source = zf.read(code)
    rel = code.split("/", 1)[1]
    bomb = _replace(models["teacher_pt"], tmp_path / "code_bomb.pt", rel, _fill(source, b"\n", DECLARED))
    assert bomb.stat().st_size < 2 << 20
    _assert_bounded_refusal("check_torchscript_archive", bomb)


def test_an_extra_pickle_member_full_of_opcodes_is_refused_at_once(tmp_path):
    ckpt = tmp_path / "ok.pth"
    torch.save({"w": torch.zeros(3, 4), "b": torch.zeros(3)}, ckpt)
    n = 400_000  # (NONE, POP) pairs: scanning them costs seconds; torch.load never reads the member
    bomb = _replace(ckpt, tmp_path / "flood.pth", "extra0.pkl", _fill(b"\x80\x02", b"N0", 2 * n, b"N."))
    from kdata.models.pickle_scan import check_checkpoint_file

    with pytest.raises(KdataError) as err:
        check_checkpoint_file(bomb)
    msg = str(err.value)  # refused for being there, before any of its opcodes is scanned
    assert str(bomb) in msg and "unexpected pickle member" in msg and "extra0.pkl'" in msg and "\n" not in msg, msg
    check_checkpoint_file(ckpt)  # the real checkpoint still passes


def test_opcodes_are_budgeted_per_file_not_per_pickle():
    import io

    from kdata.models.pickle_scan import OpcodeBudget, check_pickle

    data = b"\x80\x02" + b"N0" * 3000 + b"N."
    budget = OpcodeBudget(10_000)
    check_pickle(io.BytesIO(data), where="x", budget=budget)  # 6,002 opcodes
    with pytest.raises(KdataError, match="opcodes"):
        check_pickle(io.BytesIO(data), where="x", budget=budget)


def test_a_pt2_bomb_stops_the_cli_with_one_line(tmp_path, models, capsys):
    bomb = _replace(models["teacher_pt2"], tmp_path / "wcfg_bomb.pt2", "data/weights/model_weights_config.json",
                    _fill(b"[", b"{},", 20 << 20, b"{}]"))
    pool = make_image_folder(tmp_path / "pool", n=8)
    capsys.readouterr()
    rc = main(["select", "--pool", str(pool), "--teacher", str(bomb), "--student", models["student_pt"],
               "--budget", "4", "--device", "cpu", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("kdata: error: ") and str(bomb) in err, err
    assert "compressed" in err, err  # refused from the zip directory, not after parsing the member
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["teacher_pt2", "student_pt2", "teacher_pt", "student_pt"])
def test_real_exports_still_load(models, name):
    from kdata.models.archive_check import check_pt2_archive, check_torchscript_archive

    path = Path(models[name])
    (check_pt2_archive if path.suffix == ".pt2" else check_torchscript_archive)(path)
    model = load_model(str(path))
    assert model is not None
