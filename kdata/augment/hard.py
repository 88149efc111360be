"""HARD: generate augmented samples where teacher and student disagree, then let a critic filter them.

HARD (Nix, Burg & Sinz, "HARD: Hard Augmentations for Robust Distillation", arXiv 2305.14890)
tunes an augmentation model to produce inputs on which the teacher and the student disagree,
while the teacher still recognises the input (so it stays a valid sample of its class). Symbolic
Knowledge Distillation (West et al., arXiv 2110.07178) adds the second half: generated data is
only worth keeping after a critic has filtered it.

This module is the stage's entry (``generate``, ``pipeline_hard``, ``combine``, the manifest
section); the parts live beside it:

* ``kdata.augment.params``     — the parameter space: one learnable θ ∈ R^P per generated sample
  (``per_sample`` copies per parent, each from a different seeded start), squashed by tanh into
  ``DEFAULT_BOUNDS``; ``HardConfig``; the per-row seeds: every random draw of a generated row comes
  from generators seeded by sha256(seed, parent id, final copy index), so the output does not depend
  on the batch size, and augmenting an augmented dataset (ids moved on to ``#hard<k+K>``) draws new
  augmentations instead of repeating the earlier ones;
* ``kdata.augment.transforms`` — the differentiable augmentation (affine, blur, contrast,
  brightness, noise) and pixel/model-input/PNG conversions;
* ``kdata.augment.search``     — maximising KL(teacher ‖ student) under a teacher-flip hinge, by
  Adam on θ, or by a seeded random search for models that are not differentiable;
* ``kdata.augment.generation`` — the two passes: score the parents, then generate, render, write
  the PNG and re-score it with both models, chunk by chunk (memory does not grow with the dataset);
* ``kdata.augment.filtering``  — the teacher-flip check (``hard_teacher_flip``), the default critic
  (confidence × consistency × typicality, geometric mean ≥ ``critic_threshold``) or a trained
  critic (``critic_reject``), and the accounting;
* ``kdata.augment.rows``       — the generated rows as shard-schema (accepted / excluded) tables.

Accounting: generated rows never enter the pool's ``n_in``; they have their own invariant
``generated == generated_kept + generated_rejected`` (rejections by reason: ``hard_teacher_flip``,
``critic_reject``), and every rejected row is written to ``excluded_synthetic.parquet``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import torch

from kdata.augment.filtering import (CRITIC_REJECT, FLIP, CriticOutcome, check_generated_accounting,
                                     class_centroids, critic_filter, default_critic_scores, generated_counts)
from kdata.augment.generation import Generated, ParentPass, Rescored, generate_rows, rescore, score_parents
from kdata.augment.params import DEFAULT_BOUNDS, PARAM_NAMES, HardConfig, param_ranges, row_seeds, squash
from kdata.augment.rows import HARD_COLUMNS, final_copies, scores_like, shard_rows, split_rows
from kdata.augment.search import search_mode
from kdata.augment.transforms import decode_batch, png_bytes, render, to_model
from kdata.core.errors import KdataError
from kdata.models.spec import Model
from kdata.scoring.score import eval_mode

__all__ = ["CRITIC_REJECT", "DEFAULT_BOUNDS", "EXCLUDED_FILE", "FLIP", "HARD_COLUMNS", "PARAM_NAMES", "HardConfig",
           "HardResult", "check_generated_accounting", "class_centroids", "combine", "decode_batch",
           "default_critic_scores", "generate", "manifest_section", "param_ranges", "pipeline_hard", "png_bytes",
           "render", "squash", "to_model", "write_excluded"]

EXCLUDED_FILE = "excluded_synthetic.parquet"


@dataclass
class HardResult:
    accepted: pa.Table  # shard-schema rows + HARD_COLUMNS, kind=synthetic
    excluded: pa.Table  # rejected generated rows with their reason
    info: dict = field(default_factory=dict)

    @property
    def counts(self) -> dict:
        return self.info["counts"]


MAX_PER_SAMPLE = 256  # generated rows per kept row: more is a typo, not a data set (each costs an optimisation)


def check_per_sample(k) -> int:
    """``--hard`` / ``--per-sample``: an integer from 1 to ``MAX_PER_SAMPLE``, or one line."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_PER_SAMPLE:
        raise KdataError(f"--hard/--per-sample {k}: must be an integer from 1 to {MAX_PER_SAMPLE} "
                         "(generated rows per kept row)")
    return k


def generate(parents: pa.Table, teacher: Model, student: Model, *, config: HardConfig = HardConfig(),
             critic: str | None = None, critic_recall: float | None = None, temperature: float = 1.0,
             topk: int = 5, device: torch.device | str = "cpu", existing_ids=None) -> HardResult:
    """Generate ``per_sample`` hard augmentations of every image row of ``parents``, critic-filter them.

    ``parents`` is a shard-schema table (curated rows). ``temperature``/``topk`` are those of the
    stored soft labels. ``existing_ids``: sample ids the new rows must not reuse (the dataset they
    join). Returns accepted rows (shard schema + HARD_COLUMNS) and excluded rows. The models run in eval
    mode throughout (dropout off, BatchNorm on its running statistics), as scoring runs them; a live
    module's own modes are restored afterwards.
    """
    with eval_mode(teacher, student):
        return _generate(parents, teacher, student, config=config, critic=critic, critic_recall=critic_recall,
                         temperature=temperature, topk=topk, device=device, existing_ids=existing_ids)


def _generate(parents, teacher, student, *, config, critic, critic_recall, temperature, topk, device,
              existing_ids) -> HardResult:
    t0, c0 = time.perf_counter(), time.process_time()
    device = torch.device(device)
    if config.temperature is None:
        config = replace(config, temperature=temperature)
    check_per_sample(config.per_sample)
    bounds = config.bound_values()
    if "image" not in parents.column_names or parents.column("image").null_count == parents.num_rows:
        raise KdataError("HARD needs image rows; the curated table has no images")
    images = parents.column("image").to_pylist()
    cand = np.flatnonzero([b is not None and len(b) > 0 for b in images])
    pp = score_parents(parents, images, cand, teacher, student, batch_size=config.batch_size,
                       temperature=temperature, device=device)
    k, par_ids = config.per_sample, pp.table.column("sample_id").to_pylist()
    src = np.repeat(np.arange(pp.n), k)
    copy = final_copies(par_ids, src, np.tile(np.arange(k), pp.n), k, taken=existing_ids)
    row_parents = [par_ids[p] for p in src]
    try:
        g = generate_rows(pp, teacher, student, config=config, bounds=bounds,
                          mode=search_mode(config, teacher, student), copy=copy, device=device,
                          seeds=row_seeds(config.seed, row_parents, copy, "search"),
                          critic_seeds=row_seeds(config.seed, row_parents, copy, "critic"), default_critic=not critic)
    except RuntimeError as exc:
        raise KdataError(f"HARD: generation failed on {teacher.spec}/{student.spec}: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0]}", exit_code=1) from None
    gen_seconds = time.perf_counter() - t0
    r = rescore(pp, g, teacher, temperature=temperature, topk=topk)
    outcome = critic_filter(r.flipped, threshold=config.critic_threshold, default_parts=g.critic_parts,
                            critic=critic, critic_recall=critic_recall, scores_table=lambda: scores_like(pp, g, r))
    table = shard_rows(pp, g, r, outcome.score)
    accepted, excluded = split_rows(table, outcome, r.parent_pred)
    counts = generated_counts(outcome, r.flipped, n_parents=pp.n, skipped=pp.skipped)
    info = _info(pp, g, r, outcome, counts=counts, config=config, bounds=bounds, temperature=temperature,
                 seconds=gen_seconds, cpu_seconds=time.process_time() - c0)
    return HardResult(accepted=accepted, excluded=excluded, info=info)


def _median(a) -> float | None:
    return float(np.median(a)) if len(a) else None


def _info(pp: ParentPass, g: Generated, r: Rescored, outcome: CriticOutcome, *, counts: dict, config: HardConfig,
          bounds: dict, temperature: float, seconds: float, cpu_seconds: float) -> dict:
    """What ``generate`` reports (the manifest's ``hard`` section): counts, settings, rates, medians, timing."""
    n_gen, kl_gen = g.n, r.stats.get("kl_ts")
    accepted, alive = outcome.accepted, ~r.flipped
    info = {
        "counts": counts, "mode": g.mode, "param_names": list(PARAM_NAMES), "bounds": bounds,
        "ranges": {kk: list(v) for kk, v in param_ranges(bounds).items()},
        "config": {kk: (list(v) if isinstance(v, tuple) else v) for kk, v in config.__dict__.items()},
        "critic": outcome.kind, "critic_threshold": outcome.threshold,
        "critic_accept_rate": (float(accepted.sum() / alive.sum()) if alive.any() else None),
        "teacher_flip_rate": float(int(r.flipped.sum()) / n_gen) if n_gen else None,
        "median_kl_parents": _median(pp.kl), "median_kl_generated": _median(kl_gen) if n_gen else None,
        "median_kl_generated_kept": _median(kl_gen[accepted]) if n_gen and accepted.any() else None,
        "seconds": seconds, "optimise_seconds": g.optimise_seconds, "cpu_seconds": cpu_seconds,
        "samples_per_second": float(n_gen / seconds) if seconds > 0 and n_gen else None,
        "excluded_file": EXCLUDED_FILE, "temperature": temperature,
    }
    if g.fallback:
        info["fallback_reason"] = g.fallback
    if outcome.components:
        info["critic_component_medians"] = {kk: _median(v[alive]) for kk, v in outcome.components.items()}
    return info


def combine(curated: pa.Table, result: HardResult) -> pa.Table:
    """Curated rows followed by the accepted generated rows (originals get null HARD columns)."""
    if not result.accepted.num_rows:
        return curated
    return pa.concat_tables([curated, result.accepted], promote_options="default")


def write_excluded(result: HardResult, path) -> None:
    """Write the rejected generated rows (with their reasons) to ``path`` as Parquet, atomically."""
    from kdata.core.atomic import write_parquet

    write_parquet(path, result.excluded, row_group_size=1024)


def pipeline_hard(curated: pa.Table, *, cfg, teacher, student, device, counts: dict) -> tuple[pa.Table, HardResult]:
    """The ``--hard K`` stage of ``kdata select``: K per kept row, critic-filtered, appended.

    Adds the generated-row counts to ``counts`` (the pool's own n_in accounting is untouched).
    """
    if not isinstance(teacher, Model) or not isinstance(student, Model):
        raise KdataError("--hard needs teacher and student models (it cannot run on --scores predictions)")
    result = generate(curated, teacher, student, config=HardConfig(per_sample=int(cfg.hard), seed=cfg.seed),
                      critic=cfg.critic, critic_recall=cfg.critic_recall, temperature=cfg.temperature,
                      topk=cfg.topk, device=device, existing_ids=curated.column("sample_id").to_pylist())
    counts.update({k: v for k, v in result.counts.items()})
    return combine(curated, result), result


def manifest_section(result: HardResult) -> dict:
    """What the manifest records about HARD (JSON-able)."""
    info = {k: v for k, v in result.info.items() if k != "counts"}
    return {**info, "counts": result.counts}
