"""What a transformers directory may make kdata do, checked before anything in it is loaded.

* ``config.json`` (and ``tokenizer_config.json``) read as JSON: an ``auto_map`` (custom model or
  tokenizer classes shipped as Python files) is refused unless the user passes
  ``--trust-remote-code``; transformers would import and run those files.
* Every JSON file read here (``config.json``, ``tokenizer_config.json``, a sharded index) goes through
  :func:`read_json`: a regular file of at most :data:`MAX_JSON_BYTES`, valid and not nested too deeply
  (the sidecar reader's check), holding an object — else one line naming the file.
* A sharded index's ``weight_map`` maps tensor names to plain file names (one path component) of
  regular files inside the directory (a symlink leaving it is refused): nothing outside is read.
* weights: ``model.safetensors`` (or a sharded ``model.safetensors.index.json``) — tensors only —
  preferred; else ``pytorch_model.bin`` (or its index), read later by ``kdata.models.safe_load``
  (pickle opcodes checked, weights-only load under the audit guard). No weights: one line.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from kdata.core.digests import sha256_file_memo
from kdata.core.errors import KdataError
from kdata.models.sidecar import first_line, read_json_file
from kdata.pools.files import escaped, is_inside

CONFIG_FILES = ("config.json", "tokenizer_config.json")
MAX_JSON_BYTES = 16 << 20  # config, tokenizer config, index: real ones are KBs (a 405B model's index ~100 KB)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "generation_config.json")


def read_json(p: Path) -> dict:
    """The JSON object in ``p``, or one line naming ``p``: not a regular file, over
    :data:`MAX_JSON_BYTES`, unreadable, not valid JSON, nested too deeply, or not an object."""
    p = Path(p)
    try:
        st = p.stat()
    except OSError as exc:
        raise KdataError(f"{p}: cannot read ({first_line(exc)})") from None
    if not stat.S_ISREG(st.st_mode):
        raise KdataError(f"{p}: not a regular file")
    if st.st_size > MAX_JSON_BYTES:
        raise KdataError(f"{p}: JSON file is over {MAX_JSON_BYTES >> 20} MiB")
    data, _ = read_json_file(p)  # one line for unreadable, invalid or too deeply nested JSON
    if not isinstance(data, dict):
        raise KdataError(f"{p}: expected a JSON object, not {type(data).__name__}")
    return data


def read_config(path: Path) -> dict:
    """config.json as a dict (one line when missing or not a JSON object)."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        raise KdataError(f"{path}: not a transformers model directory (no config.json)")
    return read_json(cfg)


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
    """{} when ``p`` is absent, else :func:`read_json` (a bad file is one line, never skipped)."""
    return read_json(p) if os.path.lexists(p) else {}


def _plain_file_name(name) -> bool:
    """One path component: a non-empty string, no '/', not '.' or '..', not absolute, no NUL."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\0" not in name
            and not os.path.isabs(name))


def _weight_roots(path: Path) -> list[str]:
    """Where a model directory's weight files may resolve to: the directory itself and, for a Hugging
    Face cache snapshot (``models--org--name/snapshots/<rev>/``, whose files link to ``../../blobs/``),
    that repository's ``blobs`` folder."""
    roots = [os.path.realpath(path)]
    real = Path(roots[0])
    if real.parent.name == "snapshots" and real.parent.parent.name.startswith("models--"):
        roots.append(os.path.realpath(real.parent.parent / "blobs"))
    return roots


def _indexed(path: Path, index: str) -> list[Path]:
    """The weight files a sharded index names: plain file names of regular files inside ``path``."""
    where = path / index
    weight_map = read_json(where).get("weight_map")
    if not isinstance(weight_map, dict):
        raise KdataError(f"{where}: 'weight_map' must be an object of tensor name -> weight file name, "
                         f"not {type(weight_map).__name__}")
    bad = next(((k, v) for k, v in weight_map.items() if not isinstance(v, str)), None)
    if bad is not None:
        raise KdataError(f"{where}: weight_map[{bad[0]!r}] must be a file name, not {type(bad[1]).__name__}")
    names = sorted(set(weight_map.values()))
    if not names:
        raise KdataError(f"{where}: names no weight files (weight_map is empty)")
    roots = _weight_roots(path)
    for n in names:
        what = f"{where}: weight file {escaped(n)!r}"
        if not _plain_file_name(n):
            raise KdataError(f"{what} is not a plain file name in the model directory (one path component: "
                             "no '/', no '..', not absolute)")
        real = os.path.realpath(path / n)
        if not any(is_inside(real, r) for r in roots):
            raise KdataError(f"{what}: symlink to {escaped(real)}, outside the model directory")
    missing = [n for n in names if not os.path.lexists(path / n)]
    if missing:
        raise KdataError(f"{path / missing[0]}: listed in {index} but missing")
    odd = next((n for n in names if not (path / n).is_file()), None)
    if odd is not None:
        raise KdataError(f"{where}: weight file {escaped(odd)!r} is not a regular file")
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


def model_checksum(path: Path) -> str:
    """The checksum a loaded text model reports (``sha256:`` of ``weights_checksum``): computed here without
    loading the weights, so a rerun or a critic can compare models by what their files hold."""
    return "sha256:" + hashlib.sha256(weights_checksum(path).encode()).hexdigest()


def weights_checksum(path: Path) -> str:
    """sha256 over the config, tokenizer files and weight files (names and contents)."""
    path = Path(path)
    files = [path / "config.json", *(path / n for n in TOKENIZER_FILES if (path / n).is_file()),
             *weight_files(path)[0]]
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}\0{sha256_file_memo(f)}\0".encode())
    return h.hexdigest()
