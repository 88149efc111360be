"""Checks of a manifest's own fields, beside the file checks of ``kdata.dataset.integrity``.

- ``check_fields``: the fields readers (``kdata inspect``, the data card, ``kdata train``) use have
  the types kdata writes (a field may be absent or null where kdata writes it so);
- ``check_provenance``: the teacher, student, class names, top-k, temperature and config hash that
  the first shard's Arrow ``kdata`` metadata records agree with the manifest's, the manifest's
  ``config_hash`` is the hash of its ``config`` where kdata's hashing can be redone here (not for
  ``--critic`` or ``--scores`` runs: their hash covers values the manifest does not hold; a config
  whose pool alone was repointed, the pool having moved, passes when ``pool.spec`` names the pool
  it ran on), and a selection's ``methods`` are its config's ``--method`` chain.

Each returns at most one problem line naming the manifest file and the field.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from kdata.core.errors import KdataError
from kdata.core.jsonable import config_hash
from kdata.dataset.manifest import MANIFEST
from kdata.dataset.schema import kdata_metadata

DEFAULT_METHODS = (None, "", "default")  # ``--method`` values that resolve to the default recipe
DICT_FIELDS = ("models", "pool", "config", "scoring", "method_info", "hard", "generate", "source", "dedup")
STR_FIELDS = ("config_hash", "kdata_version", "schema_version", "balance", "dedup_level", "decisions_file",
              "license")
META_KEYS = ("class_names", "topk", "temperature")  # compared as the manifest's top-level fields


def _int(n, *, minimum: int | None = None) -> bool:
    ok = isinstance(n, int) and not isinstance(n, bool)
    return ok and (minimum is None or n >= minimum)


def _number(n) -> bool:
    return isinstance(n, (int, float)) and not isinstance(n, bool)


def _str_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _field_problem(m: dict) -> str | None:
    """The first field of ``m`` of the wrong type, as "'field' must be …" (None: all fine)."""
    for key in DICT_FIELDS:
        if m.get(key) is not None and not isinstance(m[key], dict):
            return f"'{key}' must be an object (or null), not {type(m[key]).__name__}"
    for key in STR_FIELDS:
        if m.get(key) is not None and not isinstance(m[key], str):
            return f"'{key}' must be a string (or null), not {type(m[key]).__name__}"
    for role, entry in (m.get("models") or {}).items():
        if entry is not None and not isinstance(entry, dict):
            return f"'models.{role}' must be an object (or null), not {type(entry).__name__}"
        if entry and entry.get("spec") is not None and not isinstance(entry["spec"], str):
            return f"'models.{role}.spec' must be a string (or null)"
    if (m.get("pool") or {}).get("spec") is not None and not isinstance(m["pool"]["spec"], str):
        return "'pool.spec' must be a string (or null)"
    checks = (("class_names", _str_list, "a list of strings"), ("methods", _str_list, "a list of strings"),
              ("created_unix", _number, "a number (seconds since 1970)"), ("seed", _int, "a whole number"),
              ("topk", lambda n: _int(n, minimum=0), "a whole number ≥ 0"),
              ("budget_rows", lambda n: _int(n, minimum=0), "a whole number ≥ 0"),
              ("temperature", _number, "a number"),
              ("files", lambda v: isinstance(v, list) and all(isinstance(f, dict) for f in v),
               "a list of file entries"))
    for key, ok, what in checks:
        if m.get(key) is not None and not ok(m[key]):
            return f"'{key}' must be {what}, not {m[key]!r:.40}"
    return None


def check_fields(out: Path, manifest: dict) -> list[str]:
    """The manifest fields readers use have kdata's types: one problem line naming the field, or none."""
    problem = _field_problem(manifest)
    return [f"{out / MANIFEST}: {problem}"] if problem else []


def shard_metadata(path: Path) -> dict | None:
    """The ``kdata`` metadata of a shard's Arrow schema (the schema only; None when the file is unreadable,
    which the shard checks report). A malformed entry is one ``KdataError`` line naming the shard."""
    try:
        schema = pq.read_schema(path)
    except (OSError, ValueError, pa.ArrowException):
        return None
    return kdata_metadata(schema, where=str(path))


def _is_select(config: dict) -> bool:
    """A ``kdata select`` config (``SelectConfig.to_dict``), not a derived or generated run's."""
    return {"method", "pool", "scores", "teacher", "student", "critic", "hard"} <= set(config) \
        and "command" not in config and "op" not in config


def _hash_candidates(manifest: dict) -> list[str] | None:
    """The hashes kdata could have given the manifest's config (None: not recomputable here)."""
    config = manifest.get("config")
    if not isinstance(config, dict):
        return None
    if config.get("command") in ("dedup", "generate") or config.get("op") == "augment":
        return [config_hash(config)]  # their config is hashed as written, critic digest included
    if not _is_select(config) or config.get("critic") or config.get("scores"):
        return None  # a critic's file digest, or the fields a --scores run nulls, are not in the manifest
    # a config whose pool was repointed after the run (the pool moved) still hashes with the pool it ran on
    configs = [config, {**config, "pool": (manifest.get("pool") or {}).get("spec")}]
    seeding = (((manifest.get("hard") or {}).get("config")) or {}).get("seeding")
    if config.get("hard") and isinstance(seeding, str):  # HARD runs hash their seeding scheme too (older ones not)
        configs += [{**c, "hard_seeding": seeding} for c in configs]
    return [config_hash(c) for c in configs]


def _meta_problem(m: dict, meta: dict) -> str | None:
    """The first field where the shard metadata and the manifest disagree (None: they agree). Generated
    datasets are not compared by model: their shards name the generator (in I2D2 rounds the previous
    round's student), the manifest the models of the round."""
    generated = isinstance(m.get("generate"), dict) or "decoding" in meta
    for role in () if generated else ("teacher", "student"):
        entry = (m.get("models") or {}).get(role)
        spec = entry.get("spec") if isinstance(entry, dict) else None
        if meta.get(role) is not None and spec is not None and meta[role] != spec:
            return f"'models.{role}.spec' is {spec!r} but the shards were written by {role} {meta[role]!r}"
    for key in META_KEYS:
        if meta.get(key) is not None and m.get(key) is not None and meta[key] != m[key]:
            return f"'{key}' is {m[key]!r:.60} but the shards record {meta[key]!r:.60}"
    derived = isinstance(m.get("source"), dict)  # dedup keeps its source's shard metadata, hash included
    if meta.get("config_hash") is not None and not derived and meta["config_hash"] != m.get("config_hash"):
        return f"'config_hash' is {str(m.get('config_hash'))[:12]}… but the shards record " \
               f"{str(meta['config_hash'])[:12]}…"
    return None


def check_provenance(out: Path, manifest: dict, first_shard: Path | None) -> list[str]:
    """The manifest agrees with the first shard's ``kdata`` metadata and with its own config (module doc)."""
    where = out / MANIFEST
    try:
        meta = shard_metadata(first_shard) if first_shard is not None and first_shard.is_file() else None
    except KdataError as exc:  # the shard's 'kdata' metadata is not a JSON object: what readers would trip on
        return [str(exc)]
    problem = _meta_problem(manifest, meta) if meta else None
    if problem:
        return [f"{where}: {problem}"]
    hashes = _hash_candidates(manifest)
    if hashes is not None and manifest.get("config_hash") not in hashes:
        return [f"{where}: 'config_hash' is not the hash of its 'config' (config edited after the run)"]
    config = manifest.get("config") or {}
    if _is_select(config) and isinstance(config.get("method"), (str, list)) and config["method"] not in DEFAULT_METHODS \
            and manifest.get("methods") is not None:
        raw = config["method"]
        chain = [str(x).strip() for x in (raw.split(",") if isinstance(raw, str) else raw) if str(x).strip()]
        if manifest["methods"] != chain:
            return [f"{where}: 'methods' is {manifest['methods']} but the config's --method is {config['method']!r}"]
    return []
