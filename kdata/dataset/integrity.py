"""Integrity of a written dataset: every file a run wrote, checked against its manifest, and every
count the manifest states re-derived from the files themselves.

What ``check_dataset`` verifies (each failure is one line naming the file and the problem):

- the manifest's counts add up (n_in == kept + rejected + quarantined, reasons == rejected);
- each shard listed under ``files`` exists inside OUT with its recorded size, sha256 and row
  count, and the list is not empty unless the counts say nothing was kept;
- ``decisions.parquet`` exists and matches its checksum entry (``manifest["decisions"]``, written
  by ``write_decisions``); its counts (n_in, kept, rejected, quarantined, rejected_by_reason) are
  re-derived and must equal the manifest's;
- the shards hold exactly the kept samples of the decisions table (same sample ids) plus the
  HARD-generated rows (``kind == "synthetic"``), whose number the manifest records as
  ``generated_kept`` (in ``counts`` or ``hard.counts``);
- each file written beside the shards (``excluded.parquet``, ``excluded_synthetic.parquet``: the
  only record of what a run rejected) exists with the size, sha256 and row count recorded under
  ``extra_files``. Datasets written before the manifest recorded them have no ``extra_files`` key;
  their extra files are not checked;
- the manifest's fields have the types readers expect, and its provenance (teacher, student, class
  names, config hash, methods) agrees with the shards' Arrow metadata and its own config
  (``kdata.dataset.manifest_checks``).

Checksums alone cannot catch a manifest edited by hand (n_in changed) or a decisions table
rewritten with a fresh checksum; the re-derived counts and ids do.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kdata.core.atomic import sha256_file
from kdata.core.errors import KdataError
from kdata.dataset.manifest import MANIFEST
from kdata.dataset.manifest_checks import check_fields, check_provenance
from kdata.dataset.schema import DECISIONS, KEPT, QUARANTINED, REJECTED

DECISIONS_FILE = "decisions.parquet"
EXTRA_FILES = "extra_files"  # manifest key: entries of the files written beside the shards
SYNTHETIC = "synthetic"
COUNT_KEYS = ("n_in", "kept", "rejected", "quarantined")


def file_entry(path: str | os.PathLike, *, rel: str) -> dict:
    """The manifest entry of a written Parquet file: path (relative to OUT), rows, bytes, sha256."""
    path = Path(path)
    return {"path": rel, "rows": pq.ParquetFile(path).metadata.num_rows, "bytes": path.stat().st_size,
            "sha256": sha256_file(path)}


def extra_file_entry(path: str | os.PathLike, *, rel: str) -> dict:
    """The manifest entry of a file written beside the shards: path, bytes, sha256, and rows when it
    is a Parquet file (``file_entry``)."""
    path = Path(path)
    if path.suffix == ".parquet":
        return file_entry(path, rel=rel)
    return {"path": rel, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def derive_counts(decisions: pa.Table) -> dict:
    """n_in, kept, rejected, quarantined and rejected_by_reason (``duplicate_of:<id>`` grouped as
    ``duplicate_of``) of a decisions table, the way ``Decisions.counts`` states them."""
    dec = decisions.column("decision")
    by = {v["values"]: v["counts"] for v in pc.value_counts(dec).to_pylist()}
    rejected = decisions.filter(pc.equal(dec, REJECTED)).column("reason")
    reason = pc.if_else(pc.fill_null(pc.starts_with(rejected, "duplicate_of:"), False), "duplicate_of", rejected)
    reasons = {("null" if v["values"] is None else v["values"]): v["counts"]
               for v in pc.value_counts(reason).to_pylist()} if len(reason) else {}
    return {"n_in": decisions.num_rows, "kept": by.get(KEPT, 0), "rejected": by.get(REJECTED, 0),
            "quarantined": by.get(QUARANTINED, 0), "rejected_by_reason": dict(sorted(reasons.items())),
            "unknown": {k: n for k, n in by.items() if k not in DECISIONS}}


def generated_kept(manifest: dict) -> int:
    """HARD-generated rows in the shards, as the manifest records them (0 when HARD did not run)."""
    counts = manifest.get("counts") or {}
    n = counts.get("generated_kept")
    if n is None:
        n = ((manifest.get("hard") or {}).get("counts") or {}).get("generated_kept")
    return int(n or 0)


def check_dataset(out: str | os.PathLike, manifest: dict) -> list[str]:
    """Every integrity problem of the dataset in ``out`` described by ``manifest`` (empty: intact)."""
    out = Path(out)
    if not isinstance(manifest, dict):
        return [f"{out / MANIFEST}: not a JSON object"]
    problems = manifest_shape(out, manifest) or _check_card(out, manifest)
    if problems:
        return problems
    counts = manifest["counts"]
    files = manifest.get("files")
    if not isinstance(files, list):
        return [f"{out / MANIFEST}: 'files' is not a list of shard entries"]
    expected_rows = counts["kept"] + generated_kept(manifest)
    if not files and expected_rows:
        return [f"{out / MANIFEST}: lists no shard files but its counts say {expected_rows} rows were kept"]
    shard_paths = []
    for f in files:
        path, problem = _check_file(out, f, what="shard")
        problems += [problem] if problem else []
        shard_paths.append(path)
    listed = sum(f.get("rows", 0) for f in files if isinstance(f, dict) and _count(f.get("rows", 0)))
    problems += _unlisted_shards(out, shard_paths)
    if not problems and listed != expected_rows:
        problems.append(f"{out / MANIFEST}: its shards hold {listed} rows but its counts say {expected_rows} "
                        f"(kept {counts['kept']} + generated {expected_rows - counts['kept']})")
    decisions, dec_problems = _check_decisions(out, manifest)
    problems += dec_problems + _check_extra_files(out, manifest)
    if problems or decisions is None:
        return problems
    return _check_shard_rows(out, shard_paths, decisions, manifest) \
        or check_provenance(out, manifest, shard_paths[0] if shard_paths else None)


def manifest_shape(out: str | os.PathLike, manifest: dict) -> list[str]:
    """The manifest's own problems, no file read: fields of the wrong type, counts that do not add up
    (what every reader of the manifest relies on; ``kdata inspect`` checks it before summarising)."""
    return check_fields(Path(out), manifest) or _check_counts(Path(out), manifest)


def _check_counts(out: Path, manifest: dict) -> list[str]:
    where = out / MANIFEST
    counts = manifest.get("counts")
    if not isinstance(counts, dict) or any(not _count(counts.get(k)) for k in COUNT_KEYS):
        return [f"{where}: 'counts' must give whole numbers ≥ 0 for {', '.join(COUNT_KEYS)}"]
    total = counts["kept"] + counts["rejected"] + counts["quarantined"]
    if total != counts["n_in"]:
        return [f"{where}: counts do not add up: n_in {counts['n_in']} but kept + rejected + quarantined = {total}"]
    reasons = counts.get("rejected_by_reason") or {}
    if not isinstance(reasons, dict) or any(not _count(n) for n in reasons.values()):
        return [f"{where}: 'rejected_by_reason' must map each reason to a whole number ≥ 0"]
    for n in (counts.get("generated_kept"), ((manifest.get("hard") or {}).get("counts") or {}).get("generated_kept")
              if isinstance(manifest.get("hard"), dict) else None):
        if n is not None and not _count(n):
            return [f"{where}: 'generated_kept' must be a whole number ≥ 0"]
    if sum(reasons.values()) != counts["rejected"]:
        return [f"{where}: rejection reasons add up to {sum(reasons.values())}, not to rejected {counts['rejected']}"]
    kinds = counts.get("quarantined_by_reason")  # absent from older manifests
    if kinds is not None and (not isinstance(kinds, dict) or any(not _count(n) for n in kinds.values())):
        return [f"{where}: 'quarantined_by_reason' must map each kind to a whole number ≥ 0"]
    if kinds is not None and sum(kinds.values()) != counts["quarantined"]:
        return [f"{where}: quarantine kinds add up to {sum(kinds.values())}, not to quarantined "
                f"{counts['quarantined']}"]
    return []


def _count(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def _check_card(out: Path, manifest: dict) -> list[str]:
    """The ``card`` entry, when there is one: files directly in OUT (a card may be edited: its checksums
    are reported by ``kdata inspect``, not checked here)."""
    card = manifest.get("card")
    if card is None:
        return []
    where = out / MANIFEST
    if not isinstance(card, dict) or not isinstance(card.get("files", []), list):
        return [f"{where}: 'card' is not a data card entry (path and files)"]
    for f in card.get("files", []):
        rel = f.get("path") if isinstance(f, dict) else None
        if inside(out, rel) is None or "/" in rel or not isinstance(f.get("sha256"), str):
            return [f"{where}: card entry {f!r:.80} does not name a file of the dataset's own folder"]
    return []


def _unlisted_shards(out: Path, listed: list[Path | None]) -> list[str]:
    """Parquet files under ``data/`` that the manifest does not list: readers of ``data/*.parquet``
    (pandas, Hugging Face datasets) would read them as rows of the dataset."""
    known = {p.resolve() for p in listed if p is not None}
    data = out / "data"
    extra = sorted(p for p in data.rglob("*.parquet") if not p.name.startswith(".") and p.resolve() not in known
                   and _rows(p) != 0) if data.is_dir() else []
    return [f"{extra[0]}: not listed in the manifest (readers of data/ would read its rows as the dataset's)"] \
        if extra else []


def _rows(path: Path) -> int | None:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, pa.ArrowException):
        return None


def inside(out: Path, rel) -> Path | None:
    """``out / rel`` when ``rel`` is a relative path that stays inside ``out``: no ``..``, not absolute,
    and not leaving it through a symlink (a shard linked to a file elsewhere is outside)."""
    if not isinstance(rel, str) or not rel or os.path.isabs(rel) or ".." in Path(rel).parts:
        return None
    path = out / rel
    root = os.path.realpath(out)
    if not os.path.realpath(path).startswith(root.rstrip(os.sep) + os.sep):
        return None
    return path


def decisions_path(out: Path, manifest: dict) -> Path | None:
    """The decisions table the manifest names (its checksummed ``decisions`` entry, else the older
    ``decisions_file``, else ``decisions.parquet``), inside OUT; None when it points outside or the two
    names disagree (what is checked and what is read must be one file)."""
    entry = manifest.get("decisions")
    named = manifest.get("decisions_file")
    rel = entry.get("path") if isinstance(entry, dict) else None
    if rel is not None and named is not None and named != rel:
        return None
    return inside(out, rel if rel is not None else (named if named is not None else DECISIONS_FILE))


def read_decisions(out: Path, manifest: dict) -> pa.Table | None:
    """The whole decisions table of OUT (``decisions_path``), None when the file is absent; one
    ``KdataError`` line when it points outside OUT, cannot be read or is not a decisions table."""
    path = decisions_path(out, manifest)
    if path is None:
        raise KdataError(f"{out / MANIFEST}: the decisions table it names points outside the dataset "
                         "(or is not its checksummed one)")
    if not path.exists():
        return None
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise KdataError(f"{path}: unreadable decisions table ({str(exc).splitlines()[0]})") from None
    lacking = [c for c in ("sample_id", "decision") if c not in table.column_names]
    if lacking:
        raise KdataError(f"{path}: not a decisions table (no {', '.join(map(repr, lacking))} column)")
    return table


def _check_file(out: Path, entry, *, what: str) -> tuple[Path | None, str | None]:
    """(path, problem or None) for one manifest file entry: inside OUT, present, size, sha256, rows."""
    if not isinstance(entry, dict) or not {"path", "bytes", "sha256"} <= set(entry):
        return None, f"{out / MANIFEST}: a {what} entry lacks path, bytes or sha256: {entry!r:.80}"
    if not _count(entry["bytes"]) or not isinstance(entry["sha256"], str) or not _count(entry.get("rows", 0)):
        return None, f"{out / MANIFEST}: a {what} entry's bytes, rows or sha256 has the wrong type: {entry!r:.80}"
    path = inside(out, entry["path"])
    if path is None:
        return None, f"{out / MANIFEST}: {what} path {entry['path']!r} points outside the dataset"
    if not path.is_file():
        return path, f"{path}: missing"
    size = path.stat().st_size
    if size != entry["bytes"]:
        return path, f"{path}: size {size} != manifest {entry['bytes']}"
    if sha256_file(path) != entry["sha256"]:
        return path, f"{path}: sha256 mismatch (file changed since it was written)"
    if "rows" in entry:
        try:
            rows = pq.ParquetFile(path).metadata.num_rows
        except (OSError, pa.ArrowException) as exc:
            return path, f"{path}: unreadable Parquet ({str(exc).splitlines()[0]})"
        if rows != entry["rows"]:
            return path, f"{path}: holds {rows} rows, manifest says {entry['rows']}"
    return path, None


def _check_extra_files(out: Path, manifest: dict) -> list[str]:
    """The files recorded under ``extra_files`` (written beside the shards): present, size, sha256, rows."""
    entries = manifest.get(EXTRA_FILES)
    if entries is None:  # written before extra files were recorded: nothing to compare them with
        return []
    if not isinstance(entries, list):
        return [f"{out / MANIFEST}: '{EXTRA_FILES}' is not a list of file entries"]
    problems = []
    for entry in entries:
        _, problem = _check_file(out, entry, what="extra file")
        problems += [problem] if problem else []
    return problems


def _check_decisions(out: Path, manifest: dict) -> tuple[pa.Table | None, list[str]]:
    entry = manifest.get("decisions")
    if entry is not None:
        path, problem = _check_file(out, entry, what="decisions")
        if problem:
            return None, [problem]
        if decisions_path(out, manifest) != path:
            return None, [f"{out / MANIFEST}: decisions_file {manifest.get('decisions_file')!r:.80} is not the "
                          f"checksummed decisions table {entry.get('path')!r:.80}"]
    else:  # written before decisions were checksummed: still required, and its counts still checked
        path = decisions_path(out, manifest)
        if path is None or not path.is_file():
            return None, [f"{path or out / DECISIONS_FILE}: missing (every kdata dataset has a decisions table)"]
    try:
        table = pq.read_table(path, columns=["sample_id", "decision", "reason"])
    except (OSError, pa.ArrowException, KeyError) as exc:
        return None, [f"{path}: unreadable decisions table ({str(exc).splitlines()[0]})"]
    derived = derive_counts(table)
    stated = manifest["counts"]
    problems = []
    if derived["unknown"]:
        problems.append(f"{path}: unknown decision values {sorted(map(str, derived['unknown']))}")
    for k in COUNT_KEYS:
        if derived[k] != stated[k]:
            problems.append(f"{path}: holds {derived[k]} {'rows (n_in)' if k == 'n_in' else k} but the manifest "
                            f"says {stated[k]}")
    if not problems and derived["rejected_by_reason"] != dict(sorted((stated.get("rejected_by_reason") or {}).items())):
        problems.append(f"{path}: rejection reasons {derived['rejected_by_reason']} differ from the manifest's "
                        f"{stated.get('rejected_by_reason')}")
    kinds = stated.get("quarantined_by_reason")  # absent from older manifests
    if not problems and isinstance(kinds, dict) and derived["quarantined"]:
        found = _quarantine_kinds(path)
        if found != dict(sorted(kinds.items())):
            problems.append(f"{path}: quarantine kinds {found} differ from the manifest's {kinds}")
    if pc.count_distinct(table.column("sample_id")).as_py() != table.num_rows or table.column("sample_id").null_count:
        problems.append(f"{path}: sample ids are not unique")
    return table, problems


def _quarantine_kinds(path: Path) -> dict:
    """{kind: rows} of a decisions table's quarantined rows, as ``Decisions.counts`` states them."""
    from kdata.dataset.decisions import quarantined_by_reason

    names = pq.read_schema(path).names
    table = pq.read_table(path, columns=[c for c in ("decision", "reason", "error") if c in names])
    return dict(sorted(quarantined_by_reason(table).items()))


def _check_shard_rows(out: Path, paths: list[Path], decisions: pa.Table, manifest: dict) -> list[str]:
    """The shards hold exactly the kept sample ids of the decisions table, plus the generated rows."""
    ids, kinds = [], []
    for p in paths:
        try:
            names = pq.ParquetFile(p).schema_arrow.names
            t = pq.read_table(p, columns=[c for c in ("sample_id", "kind") if c in names])
        except (OSError, pa.ArrowException) as exc:
            return [f"{p}: unreadable shard ({str(exc).splitlines()[0]})"]
        if "sample_id" not in t.column_names:
            return [f"{p}: shard has no sample_id column"]
        ids.append(t.column("sample_id").combine_chunks().cast(pa.string()))
        kinds.append(t.column("kind").combine_chunks() if "kind" in t.column_names else pa.nulls(t.num_rows, pa.string()))
    shard_ids = pa.concat_arrays(ids) if ids else pa.array([], pa.string())
    synthetic = pc.fill_null(pc.equal(pa.concat_arrays(kinds), SYNTHETIC), False) if kinds \
        else pa.array([], pa.bool_())
    # teacher-written rows that are input samples themselves (``kdata generate``) have a decision: not HARD rows
    decided = pc.is_in(shard_ids, value_set=decisions.column("sample_id").cast(pa.string()).combine_chunks())
    synthetic = pc.and_(synthetic, pc.invert(decided))
    original = pc.filter(shard_ids, pc.invert(synthetic))
    n_synth = len(shard_ids) - len(original)
    where = out / MANIFEST
    problems = []
    if n_synth != generated_kept(manifest):
        problems.append(f"{where}: the shards hold {n_synth} generated rows, the manifest says {generated_kept(manifest)}")
    kept_ids = pc.filter(decisions.column("sample_id").cast(pa.string()),
                         pc.equal(decisions.column("decision"), KEPT))
    missing = pc.filter(kept_ids, pc.invert(pc.is_in(kept_ids, value_set=original)))
    extra = pc.filter(original, pc.invert(pc.is_in(original, value_set=kept_ids.combine_chunks())))
    dec_path = decisions_path(out, manifest) or out / DECISIONS_FILE
    if len(missing):
        problems.append(f"{dec_path}: {len(missing)} kept sample(s) are not in the shards (e.g. "
                        f"'{missing[0].as_py()}')")
    if len(extra):
        problems.append(f"{dec_path}: {len(extra)} shard row(s) are not kept in the decisions table (e.g. "
                        f"'{extra[0].as_py()}')")
    if not problems and len(original) != len(kept_ids):
        problems.append(f"{out}: the shards hold {len(original)} original rows for {len(kept_ids)} kept samples "
                        f"(a sample id repeats)")
    return problems
