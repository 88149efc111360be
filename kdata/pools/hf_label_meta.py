"""Hugging Face ``ClassLabel`` metadata read strictly, before any row is read.

Integer ``label`` ids are read as the names of a ``ClassLabel`` feature (``kdata.pools.class_labels``):
in a Parquet file's ``huggingface`` schema metadata, in a saved dataset's ``dataset_info.json``.
Metadata that cannot be read faithfully must not be guessed at: names repeated (``["0", "0", "1",
…]`` would shift every later id by one), names that are not strings, a ``names`` that is not a list,
or metadata that is not JSON of the shape ``datasets`` writes were silently ignored, so the ids
became labels ``"0".."K-1"`` or other classes than meant. Each is one line naming the file.
Metadata without a ``label`` ``ClassLabel`` (no ``info``, no ``features``, no ``label`` feature, a
``label`` of another ``_type``) is no metadata: the ids are read as their decimal strings.
"""

from __future__ import annotations

import json

import pyarrow as pa

from kdata.core.errors import KdataError


def _kind(v) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(v), "number")


def check_class_label(features, *, where: str) -> None:
    """Refuse (one line naming ``where``) a ``features`` mapping whose ``label`` is a ``ClassLabel``
    whose ``names`` are not a list of distinct strings, or a ``features`` that is not a mapping."""
    if not isinstance(features, dict):
        raise KdataError(f"{where}: 'features' must be a JSON object, not a {_kind(features)}; kdata cannot tell "
                         "what the integer label ids name")
    lab = features.get("label")
    if not isinstance(lab, dict) or lab.get("_type") != "ClassLabel":
        return
    names = lab.get("names")
    what = f"{where}: the ClassLabel 'label'"
    if not isinstance(names, list):
        raise KdataError(f"{what} has 'names' that are a JSON {_kind(names)}, not a list of class names; kdata "
                         "cannot tell what the integer label ids name")
    bad = next((v for v in names if not isinstance(v, str)), None)
    if bad is not None:
        raise KdataError(f"{what} has a name that is a {_kind(bad)} ({json.dumps(bad)[:40]}), not a string")
    seen: set[str] = set()
    dup = next((v for v in names if v in seen or seen.add(v)), None)
    if dup is not None:
        raise KdataError(f"{what} lists '{dup}' more than once; its ids would name other classes than meant "
                         "(the names must be distinct)")


def _loads(raw: bytes | str, *, where: str):
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise KdataError(f"{where}: not readable JSON ({str(exc).splitlines()[0][:80] or 'nested too deeply'})") \
            from None


def check_parquet_label_metadata(schema: pa.Schema, *, where: str) -> None:
    """For a file whose ``label`` column holds integers: its ``huggingface`` schema metadata, if any,
    must be JSON of the shape ``datasets`` writes, and a ``ClassLabel`` in it readable
    (``check_class_label``). Other files are not checked: their labels do not need the names."""
    if "label" not in schema.names or not pa.types.is_integer(schema.field("label").type):
        return
    raw = (schema.metadata or {}).get(b"huggingface")
    if raw is None:
        return
    where = f"{where}: the 'huggingface' schema metadata"
    meta = _loads(raw, where=where)
    if not isinstance(meta, dict):
        raise KdataError(f"{where} is a JSON {_kind(meta)}, not an object; kdata cannot tell what the integer "
                         "label ids name")
    info = meta.get("info")
    if info is None:
        return
    if not isinstance(info, dict):
        raise KdataError(f"{where}: 'info' is a JSON {_kind(info)}, not an object; kdata cannot tell what the "
                         "integer label ids name")
    if "features" in info:
        check_class_label(info["features"], where=where)


def read_dataset_info_features(path) -> dict | None:
    """The ``features`` of a saved dataset's ``dataset_info.json`` (None: no such file, or no
    ``features``), checked by ``check_class_label``; unreadable JSON is one line naming the file."""
    try:
        raw = open(path, "rb").read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KdataError(f"{path}: cannot read ({exc.strerror})") from None
    info = _loads(raw, where=str(path))
    if not isinstance(info, dict):
        raise KdataError(f"{path}: a JSON {_kind(info)}, not an object")
    features = info.get("features")
    if features is None:
        return None
    check_class_label(features, where=str(path))
    return features
