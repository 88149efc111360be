"""Hugging Face conventions for the data card: ``dataset_info.features`` from the shards' Arrow schema.

``datasets.load_dataset(DIR)`` reads the card's front matter: without ``dataset_info.features`` the
``image`` column (Arrow ``binary``, the encoded file) loads as raw bytes; declared as an ``image``
feature it decodes to a ``PIL.Image`` — the ``datasets`` Image feature accepts binary storage as-is,
so the shards keep their plain ``binary`` column (readable by pandas, DuckDB and polars) and only
the declaration changes. The YAML written here is the form ``datasets.Features._to_yaml_list``
writes (checked against the real library in ``tests/report/test_hf.py``); it is built from the
schema without importing ``datasets``, which is not a run-time dependency of kdata.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = ["feature_yaml", "hf_features"]

# Arrow type → the dtype name of a ``datasets.Value``.
_VALUES = {pa.bool_(): "bool", pa.int8(): "int8", pa.int16(): "int16", pa.int32(): "int32", pa.int64(): "int64",
           pa.uint8(): "uint8", pa.uint16(): "uint16", pa.uint32(): "uint32", pa.uint64(): "uint64",
           pa.float16(): "float16", pa.float32(): "float32", pa.float64(): "float64", pa.string(): "string",
           pa.large_string(): "large_string", pa.binary(): "binary", pa.large_binary(): "large_binary"}


_MARKUP = set("<>&`")


class _Unsupported(Exception):
    """An Arrow type with no plain ``datasets`` feature here (the card then declares no features)."""


def feature_yaml(t: pa.DataType):
    """The YAML value of one feature: a dtype name, ``{"list": …}`` or ``{"struct": [fields]}``."""
    if t in _VALUES:
        return {"dtype": _VALUES[t]}
    if pa.types.is_list(t):
        inner = feature_yaml(t.value_type)  # as datasets writes them: ``list: int32``, ``list: [fields]``,
        if "dtype" in inner:                 # ``list: {list: int32}``
            return {"list": inner["dtype"]}
        return {"list": inner.get("struct", inner)}
    if pa.types.is_struct(t):
        return {"struct": [{"name": t.field(i).name, **feature_yaml(t.field(i).type)} for i in range(t.num_fields)]}
    raise _Unsupported(str(t))


def hf_features(schema: pa.Schema, *, image_columns: tuple[str, ...] = (), class_names=None) -> list[dict] | None:
    """``dataset_info.features`` for ``schema``: one ``{"name": …, <feature>}`` per column, in order.

    Columns in ``image_columns`` (binary, the encoded image file) are declared ``dtype: image``, and
    an integer ``label_idx`` a ``class_label`` over ``class_names`` (a list of strings; -1, "no label",
    is the id ``datasets`` itself uses) — unless a name holds markup or a control character: the front
    matter is YAML, where such names would stand as they are, so ``label_idx`` stays a plain integer.
    None when a column has a type without a plain ``datasets`` feature: the card then declares none
    and ``datasets`` infers them from the files, as it would without a card.
    """
    names = class_names if isinstance(class_names, list) and class_names and all(
        isinstance(n, str) and n.isprintable() and not _MARKUP & set(n) for n in class_names) else None
    out = []
    try:
        for f in schema:
            if f.name in image_columns and (pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)):
                out.append({"name": f.name, "dtype": "image"})
            elif f.name == "label_idx" and names and pa.types.is_integer(f.type):
                out.append({"name": f.name, "dtype": {"class_label": {"names": {str(i): n for i, n in enumerate(names)}}}})
            else:
                out.append({"name": f.name, **feature_yaml(f.type)})
    except _Unsupported:
        return None
    return out
