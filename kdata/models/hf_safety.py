"""What a transformers directory may make kdata do, checked before anything in it is loaded.

* ``config.json`` (and ``tokenizer_config.json``) read as JSON: an ``auto_map`` (custom model or
  tokenizer classes shipped as Python files) is refused unless the user passes
  ``--trust-remote-code``; transformers would import and run those files.
* weights: ``model.safetensors`` (or a sharded ``model.safetensors.index.json``) — tensors only —
  preferred; else ``pytorch_model.bin`` (or its index), read later by ``kdata.models.safe_load``
  (pickle opcodes checked, weights-only load under the audit guard). No weights: one line.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from kdata.core.digests import sha256_file_memo
from kdata.core.errors import KdataError

CONFIG_FILES = ("config.json", "tokenizer_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "generation_config.json")


def read_config(path: Path) -> dict:
    """config.json as a dict (one line when missing or not JSON)."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        raise KdataError(f"{path}: not a transformers model directory (no config.json)")
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KdataError(f"{cfg}: not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise KdataError(f"{cfg}: expected a JSON object")
    return data


def check_remote_code(path: Path, config: dict, *, trust_remote_code: bool) -> None:
    """Refuse a directory whose config or tokenizer config maps classes to its own Python code."""
    found = None if trust_remote_code else remote_code_file(path, config=config)
    if found is not None:
        raise KdataError(f"{found}: the model needs custom code from its directory (auto_map); "
                         "refused: pass --trust-remote-code to run it")


def remote_code_file(path: Path, *, config: dict | None = None) -> Path | None:
    """The config file (``config.json`` — ``config`` when already read — or ``tokenizer_config.json``)
    that maps classes to the directory's own Python code (``auto_map``), else None."""
    for name in CONFIG_FILES:
        data = config if name == "config.json" and config is not None else _json_or_empty(Path(path) / name)
        if data.get("auto_map") or data.get("trust_remote_code"):
            return Path(path) / name
    return None


def _json_or_empty(p: Path) -> dict:
    try:
        data = json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _indexed(path: Path, index: str) -> list[Path]:
    idx = _json_or_empty(path / index)
    names = sorted(set((idx.get("weight_map") or {}).values()))
    if not names:
        raise KdataError(f"{path / index}: names no weight files (weight_map is empty)")
    missing = [n for n in names if not (path / n).is_file()]
    if missing:
        raise KdataError(f"{path / missing[0]}: listed in {index} but missing")
    return [path / n for n in names]


def weight_files(path: Path) -> tuple[list[Path], str]:
    """(weight files, "safetensors" | "bin"): safetensors first; none at all is one line."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"], "safetensors"
    if (path / "model.safetensors.index.json").is_file():
        return _indexed(path, "model.safetensors.index.json"), "safetensors"
    if (path / "pytorch_model.bin").is_file():
        return [path / "pytorch_model.bin"], "bin"
    if (path / "pytorch_model.bin.index.json").is_file():
        return _indexed(path, "pytorch_model.bin.index.json"), "bin"
    raise KdataError(f"{path}: no model weights (model.safetensors or pytorch_model.bin) in the directory")


def weights_checksum(path: Path) -> str:
    """sha256 over the config, tokenizer files and weight files (names and contents)."""
    path = Path(path)
    files = [path / "config.json", *(path / n for n in TOKENIZER_FILES if (path / n).is_file()),
             *weight_files(path)[0]]
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}\0{sha256_file_memo(f)}\0".encode())
    return h.hexdigest()
