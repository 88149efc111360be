"""The data contract: Arrow schemas for the pool, the scores table and the curated shards.

Everything that crosses a stage boundary is one of these three tables, or the decisions table
that accounts for every input sample. ``validate`` names the offending file and column.
"""

from __future__ import annotations

import json

import pyarrow as pa

from kdata.core.errors import KdataError

SCHEMA_VERSION = "1.0"

# Decision states: every input sample ends in exactly one of them.
KEPT, REJECTED, QUARANTINED = "kept", "rejected", "quarantined"
DECISIONS = (KEPT, REJECTED, QUARANTINED)

# ---------------------------------------------------------------------------------------------
# Pool: candidate samples. A payload (image bytes or text) is required; the rest is optional.
POOL_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("image", pa.binary()),
        pa.field("text", pa.string()),
        pa.field("label", pa.string()),  # the (noisy) web label, as a class name
        pa.field("source", pa.string()),
        pa.field("domain", pa.string()),
        pa.field("parent_id", pa.string()),
        pa.field("kind", pa.string()),  # "original" or "synthetic"
    ]
)
POOL_REQUIRED = ("sample_id",)
POOL_PAYLOADS = ("image", "text")
# Optional column of tables that pool readers return (never stored): why a sample's payload could
# not be read (a FIFO, a symlink leaving the pool, a file over the size cap…). Scoring quarantines
# such a row with this text instead of decoding it.
READ_ERROR = "read_error"

# ---------------------------------------------------------------------------------------------
# Scores: one row per scored (non-quarantined) pool sample.
_f32 = pa.float32()
_topk_i = pa.list_(pa.int32())
_topk_f = pa.list_(pa.float32())

SCORE_STATS = (
    # name, meaning (all float32 unless noted)
    ("teacher_conf", "max teacher probability"),
    ("student_conf", "max student probability"),
    ("teacher_margin", "top-1 minus top-2 teacher probability"),
    ("student_margin", "top-1 minus top-2 student probability"),
    ("teacher_entropy", "entropy of the teacher distribution (nats)"),
    ("student_entropy", "entropy of the student distribution (nats)"),
    ("kl_ts", "KL(teacher || student) at the scoring temperature (nats)"),
    ("kl_st", "KL(student || teacher) at the scoring temperature (nats)"),
    ("teacher_label_prob", "teacher probability of the web label (NaN without a label)"),
)

SCORES_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("label_idx", pa.int32()),  # web label as class index, -1 when unknown
        pa.field("teacher_pred", pa.int32()),
        pa.field("student_pred", pa.int32()),
        pa.field("agree", pa.bool_()),
        *[pa.field(name, _f32) for name, _ in SCORE_STATS],
        pa.field("teacher_topk_idx", _topk_i),
        pa.field("teacher_topk_prob", _topk_f),
        pa.field("teacher_topk_logit", _topk_f),
        pa.field("student_topk_idx", _topk_i),
        pa.field("student_topk_prob", _topk_f),
    ]
)
# Optional columns of the scores table.
SCORES_OPTIONAL = {
    "teacher_logits": pa.list_(pa.float32()),
    "student_logits": pa.list_(pa.float32()),
    "embedding": pa.list_(pa.float16()),
    # exact per-row probabilities where the logits are not kept (kdata.core.exact_probs)
    "teacher_y_logprob": pa.float32(), "student_y_logprob": pa.float32(),
    "student_pred_logprob": pa.float32(), "kd3_half": pa.float32(),
}

# ---------------------------------------------------------------------------------------------
# Curated shards: pool payload + provenance + teacher soft labels + student prediction + scores.
SHARD_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("image", pa.binary()),
        pa.field("text", pa.string()),
        pa.field("label", pa.string()),
        pa.field("label_idx", pa.int32()),
        pa.field("source", pa.string()),
        pa.field("domain", pa.string()),
        pa.field("parent_id", pa.string()),
        pa.field("kind", pa.string()),
        pa.field("teacher_pred", pa.int32()),
        pa.field("teacher_topk_idx", _topk_i),
        pa.field("teacher_topk_prob", _topk_f),
        pa.field("teacher_topk_logit", _topk_f),
        pa.field("student_pred", pa.int32()),
        pa.field("student_conf", _f32),
        *[pa.field(name, _f32) for name, _ in SCORE_STATS if name != "student_conf"],
        pa.field("agree", pa.bool_()),
        pa.field("rank", pa.int32()),  # 0 = best ranked by the selection
    ]
)
# Causal-LM text runs: sequence-level and per-token columns of the scores table and the shards
# (docs/text.md). Per token, over the teacher's tokens: ``input_ids`` (L), the teacher's top-k next
# tokens after input_ids[:t+1] with their log-probs (L−1 lists of k) and the leftover mass (L−1).
TEXT_LM_COLUMNS = {
    **{name: _f32 for name in ("teacher_nll", "student_nll", "reference_nll", "teacher_nll_sum",
                               "student_nll_sum", "reference_nll_sum", "teacher_entropy", "kl_ts")},
    "n_tokens": pa.int32(),
    "input_ids": pa.list_(pa.int32()),
    "teacher_topk_ids": pa.list_(pa.list_(pa.int32())),
    "teacher_topk_logprobs": pa.list_(pa.list_(pa.float16())),
    "teacher_rest_mass": pa.list_(pa.float16()),
}
# Per-method scores ride along as extra float32 columns named ``score_<method>``.
SCORE_PREFIX = "score_"

# ---------------------------------------------------------------------------------------------
# Decisions: one row per input sample, the accounting of the run.
DECISIONS_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("decision", pa.string(), nullable=False),
        pa.field("reason", pa.string()),  # machine-readable, e.g. kd3_over_budget, duplicate_of:<id>
        pa.field("stage", pa.string()),  # the stage that decided
        pa.field("error", pa.string()),  # the error for quarantined samples
        pa.field("label", pa.string()),
        pa.field("label_idx", pa.int32()),
        pa.field("teacher_pred", pa.int32()),
        pa.field("student_pred", pa.int32()),
        pa.field("teacher_conf", _f32),
        pa.field("kl_ts", _f32),
    ]
)
# Optional decisions columns: the sequence NLLs of causal-LM text runs (pool perplexity in the card).
DECISIONS_OPTIONAL = {"teacher_nll": _f32, "student_nll": _f32, "reference_nll": _f32}


def _type_ok(actual: pa.DataType, expected: pa.DataType) -> bool:
    if actual.equals(expected):
        return True
    # accept large/string-view variants written by other tools
    if pa.types.is_string(expected) and (pa.types.is_large_string(actual) or pa.types.is_string_view(actual)):
        return True
    if pa.types.is_binary(expected) and (pa.types.is_large_binary(actual) or pa.types.is_binary_view(actual)):
        return True
    if pa.types.is_null(actual):
        return True
    if pa.types.is_list(expected) and (pa.types.is_list(actual) or pa.types.is_large_list(actual)):
        return _type_ok(actual.value_type, expected.value_type)
    return False


def validate(schema: pa.Schema, expected: pa.Schema, *, where: str, required: tuple[str, ...] | None = None,
             optional: dict[str, pa.DataType] | None = None, need_one_of: tuple[str, ...] = ()) -> None:
    """Check ``schema`` against ``expected``; raise a one-line KdataError naming file and column.

    Columns in ``required`` must be present (default: all of ``expected``); other expected
    columns may be absent but, if present, must have the right type. Unknown columns are allowed.
    """
    required = tuple(expected.names) if required is None else required
    names = set(schema.names)
    for col in required:
        if col not in names:
            raise KdataError(f"{where}: missing required column '{col}' (have: {', '.join(schema.names)})")
    types = {f.name: f.type for f in expected}
    types.update(optional or {})
    for f in schema:
        want = types.get(f.name)
        if want is not None and not _type_ok(f.type, want):
            raise KdataError(f"{where}: column '{f.name}' has type {f.type}, expected {want}")
        if f.name.startswith(SCORE_PREFIX) and not (pa.types.is_floating(f.type) or pa.types.is_integer(f.type)):
            raise KdataError(f"{where}: score column '{f.name}' has type {f.type}, expected a number")
    if need_one_of and not names.intersection(need_one_of):
        raise KdataError(f"{where}: needs one payload column of {', '.join(need_one_of)} (have: "
                         f"{', '.join(schema.names) or 'no columns'}); rename the column that holds the payload")


def validate_pool(schema: pa.Schema, *, where: str) -> None:
    validate(schema, POOL_SCHEMA, where=where, required=POOL_REQUIRED, need_one_of=POOL_PAYLOADS)


def check_pool_ids(table: pa.Table, *, where: str) -> None:
    """A null ``sample_id`` is one line naming the file and the first such row (not Arrow's error)."""
    ids = table.column("sample_id")
    if ids.null_count:
        row = next(i for i, v in enumerate(ids.is_null().to_pylist()) if v)
        raise KdataError(f"{where}: column 'sample_id' row {row}: null id ({ids.null_count} null id(s) in all); "
                         "every sample needs an id")


def read_errors(table: pa.Table) -> list[str | None] | None:
    """Per row, why a reader could not read the payload (None where it could); None without the column."""
    if READ_ERROR not in table.column_names or table.column(READ_ERROR).null_count == table.num_rows:
        return None
    return table.column(READ_ERROR).to_pylist()


def validate_scores(schema: pa.Schema, *, where: str) -> None:
    validate(schema, SCORES_SCHEMA, where=where, optional=SCORES_OPTIONAL)


def validate_shard(schema: pa.Schema, *, where: str) -> None:
    validate(schema, SHARD_SCHEMA, where=where,
             required=("sample_id", "teacher_topk_idx", "teacher_topk_prob", "student_pred"),
             need_one_of=POOL_PAYLOADS)


def validate_decisions(schema: pa.Schema, *, where: str) -> None:
    validate(schema, DECISIONS_SCHEMA, where=where, required=("sample_id", "decision", "reason"))


def conform(table: pa.Table, schema: pa.Schema, *, keep_extra_prefix: str | None = SCORE_PREFIX,
            extra: dict[str, pa.DataType] | None = None) -> pa.Table:
    """Return ``table`` with exactly ``schema``'s columns (nulls where absent), in order, cast.

    Extra columns whose names start with ``keep_extra_prefix`` (per-method scores) or appear in
    ``extra`` are appended after the schema's columns.
    """
    n = table.num_rows
    arrays, fields = [], []
    for f in schema:
        if f.name in table.column_names:
            arrays.append(table.column(f.name).cast(f.type))
        else:
            arrays.append(pa.nulls(n, f.type))
        fields.append(f)
    for name in table.column_names:
        if name in schema.names:
            continue
        if extra and name in extra:
            arrays.append(table.column(name).cast(extra[name]))
            fields.append(pa.field(name, extra[name]))
        elif keep_extra_prefix and name.startswith(keep_extra_prefix):
            arrays.append(table.column(name).cast(pa.float32()))
            fields.append(pa.field(name, pa.float32()))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def with_kdata_metadata(schema: pa.Schema, meta: dict) -> pa.Schema:
    """Attach the ``kdata`` key (JSON) to an Arrow schema's metadata."""
    md = dict(schema.metadata or {})
    md[b"kdata"] = json.dumps(meta, sort_keys=True).encode()
    return schema.with_metadata(md)


def kdata_metadata(schema: pa.Schema, *, where: str | None = None) -> dict:
    """The ``kdata`` entry of ``schema``'s metadata (``{}`` when absent). An entry that is not a JSON
    object is one line (``KdataError``) naming ``where``, the file the schema was read from."""
    raw = (schema.metadata or {}).get(b"kdata")
    if not raw:
        return {}
    name = where or "a Parquet file"
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON (nor UTF-8), or nested past Python's parser
        raise KdataError(f"{name}: schema metadata 'kdata' is not valid JSON") from None
    if not isinstance(meta, dict):
        raise KdataError(f"{name}: schema metadata 'kdata' is not a JSON object (a {type(meta).__name__})")
    return meta
