"""One curation run: prepare → score → finish (the function behind ``kdata select``).

The CLI, the demo and the ``curate`` flow call these stage functions; none re-implements them.
A run's report has counts that add up: ``n_in == kept + rejected + quarantined``.
"""

from __future__ import annotations

import errno
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from kdata.core.errors import KdataError, RuntimeFailure
from kdata.core.lock import exclusive
from kdata.core.main_guard import check_not_importing_main
from kdata.core.paths import cache_dir
from kdata.core.warn import warn
from kdata.pipeline.config import RunOptions, SelectConfig, validate, validate_run
from kdata.pipeline.curate import Scored, finish
from kdata.pipeline.output import RunReport, already_complete, check_out_outside_pool, publish_card
from kdata.pipeline.prepare import Prepared, prepare, resolve_dedup
from kdata.pipeline.rerun import as_recorded_pool, pool_change
from kdata.pipeline.text import score_text
from kdata.scoring.score import score_pool


def score(prep: Prepared, *, opts: RunOptions = RunOptions(), overlap_features: bool | None = None) -> Scored:
    """Score the pool with teacher and student (cached per unit); ``--scores`` predictions pass through.

    ``overlap_features`` (default: on CUDA): compute image dedup's features on a thread while the pool is
    scored (``features_ahead``)."""
    if prep.byo is not None:
        n_in = prep.byo.num_rows + len(prep.byo_quarantined)
        return Scored(scores=prep.byo, quarantined=prep.byo_quarantined,
                      info={"n_in": n_in, "units": 0, "cache_hits": 0})
    try:
        if "text_models" in prep.extra:  # Hugging Face text models (kdata.pipeline.text)
            return Scored(*score_text(prep, opts=opts))
        with features_ahead(prep, on=overlap_features):
            scores, quarantined, info = score_pool(prep.pool, prep.teacher, prep.student, config=prep.score_cfg,
                                                   device=prep.device, cache=opts.cache, progress=opts.progress)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise RuntimeFailure(f"{cache_dir('scores')}: no space left on device while caching scores "
                             "(free space, or point KDATA_CACHE elsewhere, and rerun)") from None
    return Scored(scores=scores, quarantined=quarantined, info=info)


@contextmanager
def features_ahead(prep: Prepared, *, on: bool | None = None):
    """While the body scores the pool, compute and cache the features image dedup will read
    (``kdata.dedup.features.warm_features``) on a thread — by default on CUDA only, where the GPU runs
    the models and the CPU cores would otherwise wait (on a CPU run both would share the cores). A
    failure there is left for dedup, which computes what is missing itself and reports it."""
    level = resolve_dedup(prep.cfg)
    if on is None:
        on = getattr(prep.device, "type", str(prep.device)) == "cuda"
    if not on or level not in ("exact", "near", "semantic") or not prep.pool.units or "text_models" in prep.extra:
        yield
        return
    from kdata.dedup.features import warm_features

    stop = threading.Event()
    workers = getattr(prep.score_cfg, "num_workers", "auto")

    def warm() -> None:
        try:
            warm_features(prep.pool, pixels=level != "exact", workers=workers, stop=stop,
                          max_pixels=prep.cfg.max_pixels)
        except Exception:  # noqa: BLE001 -- dedup recomputes (and reports) whatever this left undone
            pass

    thread = threading.Thread(target=warm, name="kdata-dedup-features", daemon=True)
    thread.start()
    try:
        yield
    except BaseException:
        stop.set()
        raise
    finally:
        thread.join()


def run_select(cfg: SelectConfig, *, out: str, opts: RunOptions = RunOptions()) -> RunReport:
    """Score, select and write a curated dataset to ``out``. Idempotent for the same config."""
    t0 = time.perf_counter()
    check_not_importing_main()
    validate(cfg)
    validate_run(opts)
    check_out_outside_pool(out, cfg.pool)
    with exclusive(out):  # a second run into OUT fails at once, naming this one
        cfg = as_recorded_pool(cfg, out)
        report = already_complete(out, cfg.hash(), config=cfg.recorded())
        if report is not None:
            check_same_weights(out, scores=cfg.scores)
            if not opts.cache:  # --no-cache asks for fresh scores, but a finished identical run is kept as is
                warn(f"{out}: already holds this run, complete; --no-cache scored nothing again (delete {out}, "
                     "or choose another --out, to score afresh)", note=True)
        else:
            prep = prepare(cfg, opts=opts)
            report = finish(prep, score(prep, opts=opts), out=out, progress=opts.progress)
            report.seconds = time.perf_counter() - t0
    return publish_card(report, opts.card_dir)


def check_same_weights(out: str, *, scores: str | None = None, roles: tuple[str, ...] | None = None) -> None:
    """One line when a model the finished run in ``out`` was made with has other weights now than its
    manifest records (a file or directory replaced in place: the spec, so the config hash, is the same),
    or when its pool's content is not the one recorded (``kdata.pipeline.rerun.pool_change``).
    ``scores``: the ``--scores`` file, whose checksum stands for bring-your-own models; ``roles``: only
    these models (and not the pool). Built-in models are not re-read, nor models that can no longer be
    loaded (nothing to compare)."""
    from kdata.dataset.writer import read_manifest

    manifest = read_manifest(out) or {}
    models = {r: m for r, m in (manifest.get("models") or {}).items() if roles is None or r in roles}
    for role in sorted(models, key=lambda r: (r not in ("teacher", "student"), r != "teacher", r)):
        spec, recorded = (models[role] or {}).get("spec"), (models[role] or {}).get("checksum")
        if not isinstance(spec, str) or not recorded:
            continue
        now = current_checksum(spec, class_names=manifest.get("class_names"), scores=scores)
        if now is not None and now != recorded:
            what = "the predictions file's checksum is" if spec.startswith("byo:") else "its weights are"
            raise KdataError(f"{out}: --out holds this run, made with {role} {spec} at {str(recorded)[:19]}, but "
                             f"{what} now {now[:19]}; choose another directory, or delete it to select again")
    if roles is None and (change := pool_change(manifest)) is not None:
        raise KdataError(f"{out}: --out holds this run, made from pool {(manifest.get('config') or {}).get('pool')} as it "
                         f"was then; since then {change}; choose another directory, or delete it to select again")


def current_checksum(spec: str, *, class_names=None, scores: str | None = None) -> str | None:
    """The checksum ``spec`` loads with now (as the manifest records it), or None when it cannot be
    known without work the rerun does not need: built-in models, a model that no longer loads."""
    from kdata.core.digests import sha256_file_memo
    from kdata.models.files import pool_class_names
    from kdata.models.hf import is_text_spec, text_model_path
    from kdata.models.hf_safety import model_checksum
    from kdata.models.spec import load_model

    if spec.startswith("builtin:"):
        return None
    try:
        if spec.startswith("byo:"):
            return sha256_file_memo(scores) if scores and Path(scores).is_file() else None
        if is_text_spec(spec):  # as kdata.models.hf.load_hf computes it, without loading the weights
            path = text_model_path(spec)
            return model_checksum(path) if path.is_dir() else None
        with pool_class_names(class_names):
            return load_model(spec, device="cpu").checksum
    except (KdataError, OSError, RuntimeError):  # gone or unreadable now: nothing to compare
        return None
