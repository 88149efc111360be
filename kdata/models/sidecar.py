"""The JSON sidecar next to a model file, and the class names a model ends up with.

A sidecar ``<model stem>.json`` follows timm's ``pretrained_cfg``::

    {"input_size": [3, 224, 224], "mean": [...], "std": [...], "interpolation": "bilinear",
     "class_names": ["cat", "dog", ...], "outputs": ["logits", "features"]}

Every value is checked before any model is loaded or any tensor allocated, and a bad one is one
line naming the sidecar file and the field: numbers must be finite (JSON's ``NaN``/``Infinity``
are refused), ``std`` positive, ``input_size`` three positive integers with 1 or 3 channels (what
the image decoder produces) and H, W ≤ :data:`MAX_SIDE`, ``mean``/``std`` one value per channel,
``class_names`` distinct non-empty strings.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import json
import math
import os
import unicodedata
from pathlib import Path
from typing import Sequence

from kdata.core.errors import KdataError, brief

INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box")
OUTPUTS = (["logits"], ["logits", "features"])
MAX_SIDE = 4096  # pixels per side of a model input; 2 × 3 × 4096² float32 probe batch = 400 MB
MAX_SIDECAR_BYTES = 16 << 20

# Class names the pool knows (image-folder names), set by the pipeline while it loads models.
_POOL_CLASSES: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("kdata_pool_classes",
                                                                               default=None)


@contextlib.contextmanager
def pool_class_names(names: Sequence[str] | None):
    """While active, loaders use ``names`` for models that bring no class names of their own
    (zero-shot open_clip, sidecars without ``class_names``)."""
    token = _POOL_CLASSES.set(list(names) if names else None)
    try:
        yield
    finally:
        _POOL_CLASSES.reset(token)


def current_pool_class_names() -> list[str] | None:
    """The names set by the innermost :func:`pool_class_names`, or None."""
    return _POOL_CLASSES.get()


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` — for one-line errors that wrap a library's exception."""
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}".rstrip(": ")


def sidecar_path(model_path: str | os.PathLike) -> Path:
    return Path(model_path).with_suffix(".json")


def _number(x) -> float | None:
    """A finite float from a JSON number, else None (bools, strings, NaN, ±inf, 1e400 refused)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    try:
        v = float(x)
    except OverflowError:
        return None
    return v if math.isfinite(v) else None


def check_class_names(names, *, bad) -> list[str]:
    """``class_names``: a non-empty list of distinct non-empty strings (``bad(field, why)`` raises)."""
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        bad("class_names", "must be a non-empty list of non-empty strings")
    seen: set[str] = set()
    for n in names:
        if n in seen:
            bad("class_names", f"lists '{n[:60]}' more than once")
        seen.add(n)
    return list(names)


SIDECAR_FIELDS = ("input_size", "mean", "std", "interpolation", "class_names", "outputs")


def validate_sidecar(cfg: object, *, where: str, require_class_names: bool = False) -> dict:
    """Check a sidecar dict; return it normalised. Errors name the file and the field."""
    if not isinstance(cfg, dict):
        raise KdataError(f"{where}: expected a JSON object")

    def bad(field: str, why: str):
        raise KdataError(f"{where}: field '{field}' {why}")

    for key in cfg:  # a misspelt field would otherwise be ignored silently (other extra keys are allowed)
        near = difflib.get_close_matches(str(key), SIDECAR_FIELDS, n=1, cutoff=0.8)
        if key not in SIDECAR_FIELDS and near:
            bad(str(key)[:40], f"is not a sidecar field; did you mean '{near[0]}'?")
    if "input_size" not in cfg:
        bad("input_size", "is missing (expected [C, H, W])")
    size = cfg["input_size"]
    if (not isinstance(size, list) or len(size) != 3 or not all(isinstance(v, int) and not isinstance(v, bool)
                                                                 and v > 0 for v in size)):
        bad("input_size", f"must be [C, H, W] with positive integers, got {str(size)[:60]}")
    if size[0] not in (1, 3):
        bad("input_size", f"channel count must be 1 or 3, got {size[0]}")
    if size[1] > MAX_SIDE or size[2] > MAX_SIDE:
        bad("input_size", f"H and W must be at most {MAX_SIDE} pixels, got {size[1]}×{size[2]}")
    out: dict = {"input_size": tuple(size)}
    for name in ("mean", "std"):
        if name not in cfg:
            bad(name, f"is missing (expected {size[0]} numbers)")
        v = cfg[name]
        if not isinstance(v, list) or len(v) != size[0]:
            bad(name, f"must be a list of {size[0]} numbers (one per channel), got {str(v)[:60]}")
        nums = [_number(x) for x in v]
        if any(x is None for x in nums):
            bad(name, f"must hold finite numbers, got {str(v)[:60]}")
        if name == "std" and any(x <= 0 for x in nums):
            bad(name, f"must be positive, got {v!r}")
        if name == "mean" and any(abs(x) > 1 for x in nums):
            bad(name, f"is on the 0–255 scale ({str(v)[:60]}); pixels are scaled to [0, 1] before normalising, "
                      "so give mean and std on that scale (123.675 → 0.485)")
        out[name] = tuple(nums)
    interp = cfg.get("interpolation", "bilinear")
    if interp not in INTERPOLATIONS:
        bad("interpolation", f"must be one of {', '.join(INTERPOLATIONS)}, got {str(interp)[:40]!r}")
    out["interpolation"] = interp
    names = cfg.get("class_names")
    if names is None:
        if require_class_names:
            bad("class_names", "is missing")
    else:
        out["class_names"] = check_class_names(names, bad=bad)
    outputs = cfg.get("outputs", ["logits"])
    if outputs not in OUTPUTS:
        bad("outputs", f"must be [\"logits\"] or [\"logits\", \"features\"], got {str(outputs)[:60]}")
    out["outputs"] = list(outputs)
    return out


def read_json_file(path: Path) -> tuple[object, bytes]:
    """(parsed JSON, raw bytes) of a sidecar, or one line naming the file."""
    try:
        if path.stat().st_size > MAX_SIDECAR_BYTES:
            raise KdataError(f"{path}: sidecar is over {MAX_SIDECAR_BYTES >> 20} MiB")
        raw = path.read_bytes()
        return json.loads(raw.decode("utf-8")), raw
    except (OSError, UnicodeDecodeError) as exc:
        raise KdataError(f"{path}: cannot read sidecar ({first_line(exc)})") from None
    except json.JSONDecodeError as exc:
        raise KdataError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except RecursionError:
        raise KdataError(f"{path}: not valid JSON (nested too deeply)") from None


def read_sidecar(model_path: str | os.PathLike, *, required: bool = True) -> dict | None:
    """The validated sidecar of ``model_path`` (its raw bytes under ``_raw``), or None if absent
    and not ``required``."""
    path = sidecar_path(model_path)
    if not path.is_file():
        if required:
            raise KdataError(f"{model_path}: sidecar {path.name} not found (a JSON file with input_size, "
                             "mean, std, interpolation, class_names)")
        return None
    cfg, raw = read_json_file(path)
    cfg = validate_sidecar(cfg, where=str(path))
    cfg["_raw"] = raw
    return cfg


def resolve_class_names(declared: list[str] | None, n_out: int, *, where: str) -> list[str]:
    """Class names for a model with ``n_out`` outputs: its own (in Unicode NFC, as pool folder labels are:
    names copied from folders macOS wrote decomposed still match), else the pool's, else indices."""
    if declared is not None:
        if len(declared) != n_out:
            raise KdataError(f"{where}: class-count mismatch: the model outputs {n_out} classes but its "
                             f"sidecar lists {len(declared)} class_names")
        return [unicodedata.normalize("NFC", c) if isinstance(c, str) else c for c in declared]
    hint = _POOL_CLASSES.get()
    if hint is not None:
        if len(hint) != n_out:
            raise KdataError(f"{where}: class-count mismatch: the model outputs {n_out} classes but the pool "
                             f"has {len(hint)} ({brief(hint, n=5)})")
        return list(hint)
    return [str(i) for i in range(n_out)]
