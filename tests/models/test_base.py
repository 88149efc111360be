"""``--device``: ``cuda:N`` on a machine without CUDA ended in torch's "Found no NVIDIA driver"
traceback (exit 1) while plain ``cuda`` was one line; ``cuda:99`` likewise. ``pick_device`` now
checks every form where the device is chosen: no CUDA, an index past the device count and a
malformed string (``cuda:x``, ``tpu``) are each one line, exit 2 from the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from kdata.cli import main
from kdata.core.errors import KdataError
from kdata.models.base import pick_device

NO_CUDA = not torch.cuda.is_available()


@pytest.mark.parametrize("device", ["cuda:x", "tpu", "cuda:", "cuda:-1", "CPU", "cuda:1.0", "cuda:٣", "cpu:0"])
def test_malformed_devices_are_one_line_naming_the_forms(device):
    with pytest.raises(KdataError, match=r"--device '.*': unknown device \(auto, cpu, cuda or cuda:N\)") as exc:
        pick_device(device)
    assert f"'{device}'" in str(exc.value) and "\n" not in str(exc.value)


def test_cpu_and_auto():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cpu" if NO_CUDA else "cuda")


@pytest.mark.skipif(not NO_CUDA, reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:99"])
def test_cuda_without_cuda_is_the_same_line_for_every_form(device):
    with pytest.raises(KdataError, match=rf"^--device {device} requested but no CUDA device is available$"):
        pick_device(device)


@pytest.mark.skipif(NO_CUDA, reason="needs CUDA")
def test_an_index_past_the_device_count_names_the_count():
    n = torch.cuda.device_count()
    assert pick_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(KdataError, match=rf"this machine has {n} CUDA device\(s\)"):
        pick_device(f"cuda:{n}")


def _prompts(tmp_path):
    p = tmp_path / "prompts.jsonl"
    p.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"def f{i}("}) + "\n" for i in range(2)))
    return p


@pytest.mark.skipif(not NO_CUDA, reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda:0", "cuda:99"])
def test_cli_select_and_generate_with_cuda_n_exit_2_in_one_line(tmp_path, capsys, device):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": f"t{i}", "text": f"def f{i}(x): return x + {i}"}) + "\n"
                            for i in range(4)))
    runs = [["select", "--method", "random", "--teacher", "builtin:text-teacher", "--student", "builtin:text-student",
             "--pool", str(pool), "--budget", "1", "--out", str(tmp_path / "sel"), "--quiet"],
            ["generate", "--teacher", "builtin:text-teacher", "--prompts", str(_prompts(tmp_path)),
             "--out", str(tmp_path / "gen")]]
    for argv in runs:
        code = main([*argv, "--device", device])
        err = capsys.readouterr().err
        assert code == 2, (argv[0], err)
        assert err == f"kdata: error: --device {device} requested but no CUDA device is available\n"
