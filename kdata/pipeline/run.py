"""One curation run: prepare → score → finish (the function behind ``kdata select``).

The CLI, the demo and the ``curate`` flow call these stage functions; none re-implements them.
A run's report has counts that add up: ``n_in == kept + rejected + quarantined``.
"""

from __future__ import annotations

import errno
import time

from kdata.core.errors import RuntimeFailure
from kdata.core.lock import exclusive
from kdata.core.paths import cache_dir
from kdata.pipeline.config import RunOptions, SelectConfig, validate, validate_run
from kdata.pipeline.curate import Scored, finish
from kdata.pipeline.output import RunReport, already_complete, check_out_outside_pool, publish_card
from kdata.pipeline.prepare import Prepared, prepare
from kdata.pipeline.text import score_text
from kdata.scoring.score import score_pool


def score(prep: Prepared, *, opts: RunOptions = RunOptions()) -> Scored:
    """Score the pool with teacher and student (cached per unit); ``--scores`` predictions pass through."""
    if prep.byo is not None:
        n_in = prep.byo.num_rows + len(prep.byo_quarantined)
        return Scored(scores=prep.byo, quarantined=prep.byo_quarantined,
                      info={"n_in": n_in, "units": 0, "cache_hits": 0})
    try:
        if "text_models" in prep.extra:  # Hugging Face text models (kdata.pipeline.text)
            return Scored(*score_text(prep, opts=opts))
        scores, quarantined, info = score_pool(prep.pool, prep.teacher, prep.student, config=prep.score_cfg,
                                               device=prep.device, cache=opts.cache, progress=opts.progress)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise RuntimeFailure(f"{cache_dir('scores')}: no space left on device while caching scores "
                             "(free space, or point KDATA_CACHE elsewhere, and rerun)") from None
    return Scored(scores=scores, quarantined=quarantined, info=info)


def run_select(cfg: SelectConfig, *, out: str, opts: RunOptions = RunOptions()) -> RunReport:
    """Score, select and write a curated dataset to ``out``. Idempotent for the same config."""
    t0 = time.perf_counter()
    validate(cfg)
    validate_run(opts)
    check_out_outside_pool(out, cfg.pool)
    with exclusive(out):  # a second run into OUT fails at once, naming this one
        report = already_complete(out, cfg.hash())
        if report is None:
            prep = prepare(cfg, opts=opts)
            report = finish(prep, score(prep, opts=opts), out=out, progress=opts.progress)
            report.seconds = time.perf_counter() - t0
    return publish_card(report, opts.card_dir)
