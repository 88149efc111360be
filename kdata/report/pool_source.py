"""Where a data card reads rejected samples back from: the run's own pool, not any pool a manifest names.

The dataset does not hold rejected texts and payloads, so the card reads them back from the pool.
When the pipeline writes the card, it passes its pool (``Run.pool``). The card then records that
pool's unit fingerprints (content hashes) in ``manifest["pool"]`` (``record_fingerprints``).
``kdata card DIR`` and ``kdata inspect`` reopen the recorded spec and use the pool only while its
units still have those fingerprints (``run_pool``). ``verify`` does not check the spec, so anyone
who edits the manifest can point it at any local file. Without this check, a received dataset
could copy that file into the README.md the user publishes. A relative spec is tried beside DIR
first, then from the current directory: the manifest does not record where the run was started.
"""

from __future__ import annotations

import os
from pathlib import Path

from kdata.report.markdown import md_code

__all__ = ["FINGERPRINTS", "record_fingerprints", "recorded_fingerprints", "run_pool", "unit_fingerprints"]

FINGERPRINTS = "unit_fingerprints"  # key in manifest["pool"]


def unit_fingerprints(pool) -> list[str]:
    """The content hash of each of ``pool``'s units, in unit order."""
    return [u.fingerprint() for u in pool.units]


def record_fingerprints(manifest: dict, pool) -> None:
    """Record ``pool``'s unit fingerprints in ``manifest["pool"]`` (manifests without them read no pool back)."""
    if not isinstance(manifest.get("pool"), dict):
        manifest["pool"] = {}
    manifest["pool"][FINGERPRINTS] = unit_fingerprints(pool)


def recorded_fingerprints(manifest: dict) -> list[str] | None:
    """The unit fingerprints the manifest records for its pool (None: none, or not a list of strings)."""
    fps = (manifest.get("pool") if isinstance(manifest.get("pool"), dict) else {}).get(FINGERPRINTS)
    ok = isinstance(fps, list) and fps and all(isinstance(f, str) for f in fps)
    return fps if ok else None


def _candidates(out: Path, spec: str, from_out=None) -> list[str]:
    """Where a recorded spec may be: where the run saw it from DIR (``from_out``, a relative spec), beside
    DIR, then as written (from the cwd)."""
    if spec.startswith("builtin:") or os.path.isabs(spec):
        return [spec]
    found = [str(Path(out).resolve() / from_out)] if isinstance(from_out, str) and from_out else []
    for cand in (str(Path(out).resolve().parent / spec), spec):
        if all(os.path.realpath(cand) != os.path.realpath(c) for c in found):
            found.append(cand)
    return found


def run_pool(run, spec: str) -> tuple[object | None, str | None]:
    """(the pool the run was made from, None) or (None, why not, as a phrase following "the pool ``spec``").

    ``run.pool`` when the pipeline passed it; otherwise ``spec`` opened, beside DIR or from the cwd,
    and used only if its unit fingerprints equal the ones the manifest records."""
    from kdata.pools.spec import open_pool

    if run.pool is not None:
        return run.pool, None
    want = recorded_fingerprints(run.manifest)
    if want is None:
        return None, ("cannot be checked: the manifest records no unit fingerprints of the pool the dataset was "
                      "made from, so no pool is read back")
    why = None
    section = run.manifest.get("pool") if isinstance(run.manifest.get("pool"), dict) else {}
    for cand in _candidates(run.out, str(spec), section.get("from_out")):
        try:
            if unit_fingerprints(pool := open_pool(cand)) == want:
                return pool, None
            why = ("is not the pool this dataset was made from: its unit fingerprints differ from the ones the "
                   "manifest records, so it is not read back")
        except Exception as exc:  # noqa: BLE001  (moved, deleted, unreadable: the card says so)
            why = why or f"is not reachable: {md_code(f'{type(exc).__name__}: {str(exc)[:120]}')}"
    return None, why
