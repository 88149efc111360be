"""Parquet pool columns in the shapes other tools write, read as kdata's pool schema
(``kdata.pools.parquet_rows`` applies ``Shapes`` on every path: rows by range or position, one
column alone, the ids, the distinct labels, so each reads the same values):

* ``image`` as ``struct<bytes: binary, path: string>``, Hugging Face ``datasets``' ``Image`` feature
  (``Dataset.to_parquet``, the Hub's Parquet exports): the ``bytes`` are the payload, read within
  the same bounds as a binary column (its leaf ``image.bytes`` read as a dictionary where it could
  be a dictionary bomb). A row with a ``path`` and no bytes is quarantined (``IMAGE_PATH_ONLY``):
  kdata never reads a path named in the data. The ``path`` leaf is read as a dictionary, only to
  tell whether it is set.
* an integer ``label`` (``ClassLabel`` ids): the names in the file's ``huggingface`` schema metadata
  (``{"info": {"features": {"label": {"_type": "ClassLabel", "names": [...]}}}}``), else the id as a
  string (``"3"``). An id outside the names quarantines the row (``LABEL_OUT_OF_RANGE``), but -1,
  which ``datasets`` writes for "no label": a null label.
* an integer ``sample_id``: the id as a string.
* ``dictionary<string>`` (a pandas ``category``) in a string column, ``dictionary<binary>`` in
  ``image``: their values (decoded by ``parquet_rows._expand``, sizes checked first).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from kdata.dataset.schema import POOL_SCHEMA
from kdata.pools.class_labels import class_label_names, class_label_strings

IMAGE_PATH_ONLY = "image given as a path only, no bytes (kdata does not read paths named in the data)"
LABEL_OUT_OF_RANGE = "label: ClassLabel id outside the {n} names of the file's huggingface metadata (id {id})"
PATH_ONLY = "__kdata_image_path_only"  # a batch column from ``Shapes.flat`` to ``Shapes.convert``
INT_COLUMNS = ("sample_id", "label")  # integer columns read as strings
_BINARY = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_binary_view)
_STRING = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)


def _is(t: pa.DataType, kinds) -> bool:
    return any(f(t) for f in kinds)


def is_image_struct(t: pa.DataType) -> bool:
    """``struct<bytes: binary, path: string>`` (``path`` optional, no other field)."""
    if not pa.types.is_struct(t):
        return False
    fields = {t.field(i).name: t.field(i).type for i in range(t.num_fields)}
    return ("bytes" in fields and _is(fields["bytes"], _BINARY) and set(fields) <= {"bytes", "path"}
            and ("path" not in fields or _is(fields["path"], _STRING) or pa.types.is_null(fields["path"])))


def hf_label_names(schema: pa.Schema) -> tuple[str, ...] | None:
    """The ClassLabel names of the ``label`` column in a ``datasets``-written file's metadata, else None."""
    raw = (schema.metadata or {}).get(b"huggingface")
    try:
        names = class_label_names(json.loads(raw)["info"]["features"]) if raw else None
    except (ValueError, KeyError, TypeError):
        return None
    return None if names is None else tuple(names)


@dataclass(frozen=True)
class Shapes:
    """How a file's pool columns are read as the pool schema (small, picklable: ships with a plan)."""

    image_struct: bool = False  # ``image`` is struct<bytes, path>
    image_path: bool = False  # ... with a ``path`` field
    int_columns: tuple[str, ...] = ()  # of ``INT_COLUMNS``, those holding integers
    label_names: tuple[str, ...] | None = None  # the ClassLabel names of an integer ``label``

    @classmethod
    def of(cls, schema: pa.Schema) -> Shapes:
        names = set(schema.names)
        image = schema.field("image").type if "image" in names else None
        ints = tuple(c for c in INT_COLUMNS if c in names and pa.types.is_integer(schema.field(c).type))
        return cls(image_struct=image is not None and is_image_struct(image),
                   image_path=image is not None and is_image_struct(image) and image.get_field_index("path") >= 0,
                   int_columns=ints, label_names=hf_label_names(schema) if "label" in ints else None)

    def pool_types(self, schema: pa.Schema) -> pa.Schema:
        """``schema`` with each column's type as it is read (for ``validate_pool``): an image struct as
        its bytes, integers of ``int_columns`` as strings, a dictionary of the expected kind as its values."""
        fields = []
        for f in schema:
            want = POOL_SCHEMA.field(f.name).type if f.name in POOL_SCHEMA.names else None
            t = f.type
            if f.name == "image" and self.image_struct:
                t = t.field("bytes").type
            elif f.name in self.int_columns:
                t = pa.string()
            elif want is not None and pa.types.is_dictionary(t) and _is(t.value_type, _STRING if want == pa.string()
                                                                      else _BINARY):
                t = t.value_type
            fields.append(f.with_type(t))
        return pa.schema(fields, metadata=schema.metadata)

    def leaf(self, column: str) -> str:
        """The Parquet leaf holding ``column``'s payload (``image.bytes`` for an image struct)."""
        return "image.bytes" if column == "image" and self.image_struct else column

    def is_payload_struct(self, column: str) -> bool:
        return column == "image" and self.image_struct

    def dictionary_leaves(self, columns) -> list[str]:
        """Leaves always read as dictionaries when ``columns`` are read: an image struct's ``path``, so
        its values (never used) are not expanded row by row."""
        return ["image.path"] if self.image_path and "image" in columns else []

    def read_groups(self, pf, groups: list[int], columns: list[str], **kw) -> pa.Table:
        """``pf.read_row_groups``; with an image struct a row group at a time (Arrow cannot join row
        groups of a struct whose leaves are read as dictionaries: each group has its own)."""
        if not self.image_struct or len(groups) < 2:
            return pf.read_row_groups(groups, columns=columns, **kw)
        return pa.concat_tables([pf.read_row_group(g, columns=columns, **kw) for g in groups])

    def iter_batches(self, pf, groups: list[int], *, batch_size: int, columns: list[str]):
        """``pf.iter_batches`` over ``groups``; with an image struct, no batch spans two row groups (as
        ``read_groups``)."""
        if not self.image_struct:
            return pf.iter_batches(batch_size=batch_size, row_groups=groups, columns=columns, use_threads=False)
        return itertools.chain.from_iterable(
            pf.iter_batches(batch_size=batch_size, row_groups=[g], columns=columns, use_threads=False) for g in groups)

    def flat(self, data):
        """A batch or table read from the file with an image struct as its ``bytes`` (a dictionary where
        read so) and a ``PATH_ONLY`` column (True where only the path is set); else ``data``."""
        if not self.image_struct or "image" not in data.schema.names:
            return data
        i = data.schema.get_field_index("image")
        col = data.column(i)
        chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
        kept, flags = [], []
        for c in chunks:
            kids = dict(zip((c.type.field(k).name for k in range(c.type.num_fields)), c.flatten()))
            kept.append(kids["bytes"])
            path = kids.get("path")
            flags.append(pc.and_(kids["bytes"].is_null(), path.is_valid()) if path is not None
                         else pa.array([False] * len(c), pa.bool_()))
        if isinstance(col, pa.ChunkedArray):
            kept_col = pa.chunked_array(kept, col.type.field("bytes").type)
            flag_col = pa.chunked_array(flags, pa.bool_())
        else:
            kept_col, flag_col = kept[0], flags[0]
        return data.set_column(i, "image", kept_col).append_column(PATH_ONLY, flag_col)

    def convert(self, table: pa.Table) -> tuple[pa.Table, list[str | None]]:
        """A ``flat`` table with integer ids and labels as strings (labels: their ClassLabel names) and
        the ``PATH_ONLY`` column dropped; with each row's reason to quarantine it (else None)."""
        errors: list[str | None] = [None] * table.num_rows
        if PATH_ONLY in table.column_names:
            for i in pc.indices_nonzero(table.column(PATH_ONLY).combine_chunks()).to_pylist():
                errors[i] = IMAGE_PATH_ONLY
            table = table.drop_columns([PATH_ONLY])
        for name in self.int_columns:
            if name not in table.column_names or not pa.types.is_integer(table.schema.field(name).type):
                continue
            col = table.column(name)
            if name == "label" and self.label_names is not None:
                strings = class_label_strings(col, list(self.label_names))
                bad = pc.and_(pc.is_null(strings), pc.not_equal(col, -1))  # null where the id is null
                for i in pc.indices_nonzero(pc.fill_null(bad, False).combine_chunks()).to_pylist():
                    errors[i] = errors[i] or LABEL_OUT_OF_RANGE.format(n=len(self.label_names), id=col[i].as_py())
                col = strings
            table = table.set_column(table.column_names.index(name), name, pc.cast(col, pa.string()))
        return table, errors
