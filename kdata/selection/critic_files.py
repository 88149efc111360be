"""A critic's two files on disk (``critic.json``, ``critic.npz``): read and checked whole, written atomically.

``read_critic_files(dir)`` reads both and checks every field before anything uses them, so a damaged
or hand-edited critic is one line naming the file and the field (exit 2), never a traceback mid-run
nor a critic that silently rejects every row: unreadable JSON or a truncated archive; a JSON that is
not an object; a missing, mistyped or non-finite field; NaN/inf in the weights or the scaler; a zero or
negative scale; weights, scaler and feature names of different lengths; a threshold outside [0, 1];
validation probabilities outside [0, 1] or labels other than 0/1. The archive is read with
``allow_pickle=False``: an object array is refused, never unpickled.

``write_critic_dir(out, arrays, meta)`` writes both files into a staging directory beside OUT and
renames it into place (``kdata.dataset.writer.Staging``), replacing a critic already there only as
a whole: a crash leaves either the old critic or the new one, never a mix. ``check_critic_out(out,
fit=)`` is ``kdata critic fit``'s check of ``--out`` before any work (see its doc).

Public API: ``FORMAT``, ``CRITIC_FILES``, ``read_critic_files(dir) -> dict``, ``write_critic_dir``,
``check_critic_out``, ``fit_key``, ``feature_mismatch(fitted, got) -> str``.
"""

from __future__ import annotations

import io
import json
import math
import numbers
import os
import shutil
import zipfile
import zlib
from pathlib import Path

import numpy as np

from kdata.core.errors import KdataError

FORMAT = "kdata-critic-1"
CRITIC_FILES = ("critic.json", "critic.npz")
ARRAYS = ("coef", "intercept", "mean", "scale", "val_prob", "val_label")
META_DICTS = ("target", "metrics", "text", "models")  # optional objects of critic.json


def read_critic_files(path: str | Path) -> dict:
    """The checked contents of the critic directory ``path``: ``Critic``'s fields (module doc)."""
    d = Path(path)
    meta_p, arr_p = d / "critic.json", d / "critic.npz"
    if not meta_p.is_file() or not arr_p.is_file():
        raise KdataError(f"{path}: not a critic directory (expected critic.json and critic.npz; "
                         "fit one with `kdata critic fit`)")
    meta = _read_meta(meta_p)
    names = meta["feature_names"]
    a = _read_arrays(arr_p)
    n = len(names)
    for key in ("coef", "mean", "scale"):
        _check_vector(arr_p, key, a[key], n=n, what="one per name in critic.json's 'feature_names'")
    if (a["scale"] <= 0).any():
        j = int(np.flatnonzero(a["scale"] <= 0)[0])
        raise KdataError(f"{arr_p}: 'scale' must be > 0 (a standard deviation); feature {j} ({names[j]}) has "
                         f"{a['scale'][j]:g}")
    _check_vector(arr_p, "intercept", a["intercept"], n=1, what="one value")
    _check_vector(arr_p, "val_prob", a["val_prob"])
    if ((a["val_prob"] < 0) | (a["val_prob"] > 1)).any():
        raise KdataError(f"{arr_p}: 'val_prob' holds values outside [0, 1] (they are probabilities)")
    labels = a["val_label"]
    if labels.ndim != 1 or len(labels) != len(a["val_prob"]) or labels.dtype.kind not in "biu" \
            or not np.isin(labels, (0, 1)).all():
        raise KdataError(f"{arr_p}: 'val_label' must be {len(a['val_prob'])} labels of 0/1 (one per 'val_prob'), "
                         f"got shape {labels.shape} of {labels.dtype}")
    return {"coef": a["coef"].astype(np.float64), "intercept": float(a["intercept"][0]),
            "mean": a["mean"].astype(np.float64), "scale": a["scale"].astype(np.float64), "feature_names": names,
            "threshold": meta["threshold"], "target": meta["target"], "val_prob": a["val_prob"].astype(np.float64),
            "val_label": labels.astype(bool), "metrics": meta["metrics"], "text": meta["text"],
            "models": meta.get("models")}


def _read_meta(p: Path) -> dict:
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise KdataError(f"{p}: not valid JSON ({str(exc).splitlines()[0]})") from None
    except OSError as exc:
        raise KdataError(f"{p}: unreadable ({exc.strerror or exc})") from None
    if not isinstance(meta, dict):
        raise KdataError(f"{p}: expected a JSON object, got a JSON {_json_type(meta)}")
    if meta.get("format") != FORMAT:
        raise KdataError(f"{p}: unknown critic format {meta.get('format')!r} (expected {FORMAT!r})")
    names = meta.get("feature_names")
    if not isinstance(names, list) or not names or not all(isinstance(s, str) and s for s in names):
        raise KdataError(f"{p}: 'feature_names' must be a non-empty list of names, got {_brief(names)}")
    if len(set(names)) != len(names):
        dup = next(s for s in names if names.count(s) > 1)
        raise KdataError(f"{p}: 'feature_names' names {dup!r} twice")
    t = meta.get("threshold")
    if not _real(t) or not 0 <= t <= 1 + 1e-9:
        raise KdataError(f"{p}: 'threshold' must be a number in [0, 1] (a cut on P(accept)), got {_brief(t)}")
    out = {"feature_names": list(names), "threshold": float(t)}
    for key in META_DICTS:
        v = meta.get(key)
        if v is not None and not isinstance(v, dict):
            raise KdataError(f"{p}: '{key}' must be a JSON object, got {_brief(v)}")
        out[key] = v if key == "models" else (v or {})
    _check_target(p, out["target"])
    for key in ("text", "models"):
        bad = [k for k, v in (out[key] or {}).items() if v is not None and not isinstance(v, str)]
        if bad:
            raise KdataError(f"{p}: '{key}.{bad[0]}' must be a string, got {_brief(out[key][bad[0]])}")
    return out


def _check_target(p: Path, target: dict) -> None:
    unknown = sorted(set(target) - {"recall", "precision"})
    if unknown:
        raise KdataError(f"{p}: 'target' has unknown key {unknown[0]!r} (expected recall or precision)")
    for k, v in target.items():
        if v is not None and not (_real(v) and 0 < v <= 1):
            raise KdataError(f"{p}: 'target.{k}' must be a number in (0, 1], got {_brief(v)}")


def _read_arrays(p: Path) -> dict:
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
        if magic not in (b"PK\x03\x04", b"PK\x05\x06"):
            raise KdataError(f"{p}: not a .npz archive (it does not start as a zip file does); refit the critic")
        with np.load(p, allow_pickle=False) as z:
            missing = [k for k in ARRAYS if k not in z.files]
            if missing:
                raise KdataError(f"{p}: lacks the array(s) {', '.join(repr(k) for k in missing)} "
                                 "(a critic written by `kdata critic fit` has all of " + ", ".join(ARRAYS) + ")")
            return {k: z[k] for k in ARRAYS}
    except KdataError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise KdataError(f"{p}: holds an object array (pickled data); a critic holds plain numeric arrays "
                             "and kdata never unpickles one") from None
        raise KdataError(f"{p}: unreadable ({str(exc).splitlines()[0]})") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError) as exc:
        raise KdataError(f"{p}: not a readable .npz archive ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'truncated'}); refit the critic") from None


def _check_vector(p: Path, key: str, v: np.ndarray, *, n: int | None = None, what: str = "") -> None:
    """``v`` is a 1-D array of finite real numbers (of length ``n`` when given), else one line."""
    if v.dtype.kind not in "fiu" or v.ndim != 1 or (n is not None and len(v) != n):
        raise KdataError(f"{p}: '{key}' must be a 1-D numeric array" + (f" of length {n} ({what})" if n else "")
                         + f", got shape {v.shape} of {v.dtype}")
    bad = ~np.isfinite(v.astype(np.float64))
    if bad.any():
        raise KdataError(f"{p}: '{key}' holds {int(bad.sum())} non-finite value(s) (NaN or inf; first at "
                         f"index {int(np.flatnonzero(bad)[0])}); refit the critic")


def feature_mismatch(fitted: list[str], got: list[str]) -> str:
    """Where the features a critic was fitted on and those of the scores part: the first differing one."""
    for i, (a, b) in enumerate(zip(fitted, got)):
        if a != b:
            return (f"feature {i} is {a!r} in the critic but {b!r} in these scores (fitted on {len(fitted)} "
                    f"features, got {len(got)})")
    n = min(len(fitted), len(got))
    if len(fitted) > n:
        return f"the critic has {len(fitted)} features, these scores {n}: the first missing is {fitted[n]!r}"
    return f"the critic has {len(fitted)} features, these scores {len(got)}: the first extra is {got[n]!r}"


def fit_key(labels: str | Path, *, source: str, source_sha256: str | None, options: dict) -> str:
    """``sha256:`` of what decides a fit: the labels file's bytes, the source (and its bytes when a file),
    the models, the target and the options (``options``). A critic in --out recording the same key is
    this fit's, and is replaced; any other is refused (``check_critic_out``)."""
    import hashlib

    from kdata.core.atomic import sha256_file

    key = {"labels_sha256": sha256_file(labels), "source": source, "source_sha256": source_sha256, **options}
    return "sha256:" + hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def check_critic_out(out: str | Path, *, fit: str, overwrite: bool = False) -> None:
    """``kdata critic fit``'s ``--out``, before any work: absent or an empty directory is written; an
    existing critic fitted the same way (``fit``: the hash of its inputs and options, recorded in its
    ``critic.json``), or any critic with ``overwrite`` (``--overwrite``, as ``kdata train``'s), is
    replaced; anything else is one line — a file, a non-empty directory that is not a critic, a critic
    fitted otherwise (as ``kdata select`` refuses a different run)."""
    d = Path(out)
    if d.exists() and not d.is_dir():
        raise KdataError(f"{out}: --out exists and is not a directory (a critic is a directory of critic.json "
                         "and critic.npz); name a new directory")
    if d.exists() and Path.cwd().resolve().is_relative_to(d.resolve()):
        raise KdataError(f"{out}: --out is the current directory (or holds it); the critic replaces OUT whole, "
                         "which would pull the directory from under this shell — name a new one")
    if not d.exists() or not any(d.iterdir()):
        return
    if not all((d / n).is_file() for n in CRITIC_FILES):
        raise KdataError(f"{out}: --out is not empty and holds no critic; choose another directory")
    extra = sorted(p.name for p in d.iterdir() if p.name not in CRITIC_FILES)
    try:
        meta = json.loads((d / "critic.json").read_text(encoding="utf-8"))
        recorded = meta.get("fit") if isinstance(meta, dict) else None
    except (ValueError, UnicodeDecodeError, OSError):
        recorded = None
    if extra:
        raise KdataError(f"{out}: --out holds a critic and other files ({extra[0]!r}); choose another directory")
    if recorded != fit and not overwrite:
        why = "one fitted with other labels, scores or options" if recorded else "one fitted before kdata recorded how"
        raise KdataError(f"{out}: --out already holds a critic ({why}); choose another directory, or replace it "
                         "with --overwrite")


def write_critic_dir(out: str | Path, arrays: dict, meta: dict) -> Path:
    """Write ``critic.npz`` (``arrays``) and ``critic.json`` (``meta``) into a staging directory beside
    ``out`` and rename it into place; a critic already at ``out`` (``check_critic_out`` let it be
    replaced) is swapped out whole under OUT's lock."""
    from kdata.core.atomic import write_bytes, write_json
    from kdata.dataset.writer import Staging

    d = Path(out)
    if d.is_dir() and any(p.name not in CRITIC_FILES for p in d.iterdir()):
        raise KdataError(f"{out}: holds files other than a critic's; a critic is written to a new or empty "
                         "directory, or over another critic")
    stage = Staging(out)
    old = stage.out.parent / f".{stage.out.name}.kdata-replaced-{os.getpid()}"
    try:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        write_bytes(stage.path / "critic.npz", buf.getvalue())
        write_json(stage.path / "critic.json", meta)
        if stage.out.is_dir() and any(stage.out.iterdir()):
            os.rename(stage.out, old)  # the previous critic, removed once the new one is in place
    except BaseException:
        stage.abort()
        raise
    try:
        stage.commit()
    except BaseException:
        if old.exists() and not stage.out.exists():
            os.rename(old, stage.out)  # the new one failed to land: the previous critic stays
        raise
    shutil.rmtree(old, ignore_errors=True)
    return d


def _real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _json_type(v) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(v), "number")


def _brief(v) -> str:
    s = json.dumps(v)
    return s if len(s) <= 40 else s[:37] + "…"
