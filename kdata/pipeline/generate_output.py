"""Account for every generated candidate and write the candidates dataset (``kdata generate``, step 3).

Each candidate ends in one state (``n_in`` = candidates = kept + rejected + quarantined):

* ``quarantined`` / ``empty_generation`` — the teacher wrote no text (EOS first, or only whitespace);
  with a critic also the rows text scoring cannot score (e.g. ``too_short: …``), with its reason;
* ``rejected`` / ``critic_reject`` — the critic's P(accept) (``score_critic``) is below its threshold;
* ``kept`` — everything else (all non-empty candidates when no critic is given).

The kept rows are the dataset's shards (a text pool for ``kdata select --pool OUT``);
``decisions.parquet`` holds every candidate's state and ``score_critic``; ``excluded.parquet``
holds what was not kept with its prompt, text, reason and critic score (the exclusion file).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kdata.core.atomic import write_parquet
from kdata.core.errors import KdataError
from kdata.core.jsonable import config_hash
from kdata.dataset.schema import KEPT, QUARANTINED, REJECTED, SHARD_SCHEMA, conform
from kdata.pipeline.output import Output, RunReport, already_complete, write_output

EXCLUDED_FILE = "excluded.parquet"
EMPTY = "empty_generation"
CRITIC_REJECT = "critic_reject"
N_EXAMPLES = 3


def load_text_critic(path, *, recall=None, precision=None):
    """The fitted text critic at ``path`` cut at the recall or precision target (one line when it is
    an image-score critic)."""
    from kdata.selection.critic_model import load_critic

    crit = load_critic(path).with_target(recall=recall, precision=precision)
    if not crit.is_text:
        raise KdataError(f"{path}: an image-score critic; fit a text critic on generated rows "
                         "(kdata critic fit --scores-from CANDIDATES --teacher hf:… --student hf:…)")
    return crit


def critic_scores(cands: pa.Table, *, critic, teacher, student, device, recall=None, precision=None):
    """(P(accept) per candidate — NaN where not scored —, {sample_id: quarantine reason}, the critic).
    ``critic``: a critic directory (cut at ``recall`` / ``precision``) or an already loaded ``Critic``.

    The candidates' texts are scored by teacher and student exactly as ``kdata select`` scores a
    text pool, so the critic sees the features it was fitted on."""
    from kdata.scoring.text import TextScoreConfig, score_text_table, text_models

    crit = load_text_critic(critic, recall=recall, precision=precision) if isinstance(critic, (str, Path)) else critic
    if not cands.num_rows:  # every candidate empty: nothing to score
        return np.zeros(0), {}, crit
    pool_rows = cands.select(["sample_id", "text"])
    scores, quarantined = score_text_table(pool_rows, text_models(teacher, student), config=TextScoreConfig(),
                                           device=device)
    texts = dict(zip(cands.column("sample_id").to_pylist(), cands.column("text").to_pylist()))
    ids = scores.column("sample_id").to_pylist()
    p = crit.score(scores, texts=[texts[i] for i in ids], device=device) if ids else np.zeros(0)
    prob = dict(zip(ids, p))
    out = np.array([prob.get(i, np.nan) for i in cands.column("sample_id").to_pylist()], dtype=np.float64)
    return out, dict(quarantined), crit


def decide(cands: pa.Table, *, prob: np.ndarray | None, threshold: float | None,
           quarantined: dict[str, str]) -> tuple[list[str], list[str | None], list[str | None]]:
    """(decision, reason, error) per candidate (module doc)."""
    texts = cands.column("text").to_pylist()
    ids = cands.column("sample_id").to_pylist()
    dec, why, err = [], [], []
    for k, (sid, text) in enumerate(zip(ids, texts)):
        if not (text or "").strip():
            dec.append(QUARANTINED), why.append(EMPTY), err.append("the generation holds no text")
        elif sid in quarantined:
            reason = quarantined[sid]
            dec.append(QUARANTINED), why.append(reason.split(":", 1)[0]), err.append(reason)
        elif prob is not None and not prob[k] >= threshold:
            dec.append(REJECTED), why.append(CRITIC_REJECT), err.append(None)
        else:
            dec.append(KEPT), why.append(None), err.append(None)
    return dec, why, err


def _examples(table: pa.Table, n: int = N_EXAMPLES) -> list[dict]:
    cols = [c for c in ("sample_id", "prompt", "text", "score_critic", "reason") if c in table.column_names]
    return [{k: (_finite(v) if isinstance(v, float) else v) for k, v in r.items()}
            for r in table.select(cols).slice(0, n).to_pylist()]


def _finite(v: float) -> float | None:
    """A score rounded for the manifest; None (JSON null) where there is none (NaN: an empty or
    quarantined candidate the critic did not score), since NaN is not JSON."""
    return round(v, 4) if math.isfinite(v) else None


def _section(cands, prompts, cfg, kept, excluded, crit, counts) -> dict:
    critic = None
    if crit is not None:
        critic = {"path": Path(cfg.critic).name, "threshold": crit.threshold, "target": crit.target,
                  "val_precision": crit.metrics.get("val_precision"), "val_recall": crit.metrics.get("val_recall"),
                  "val_n": crit.metrics.get("val_n"), "estimate": crit.metrics.get("estimate"),
                  "embedder": crit.text.get("embedder")}
    rejected = excluded.filter(pc.equal(excluded.column("decision"), REJECTED))
    if crit is not None and rejected.num_rows:  # the clearest rejections first
        rejected = rejected.take(pc.sort_indices(rejected, [("score_critic", "ascending")]))
    if crit is not None and kept.num_rows:
        kept = kept.take(pc.sort_indices(kept, [("score_critic", "descending")]))
    return {"prompts": {"n": len(prompts), "examples": [{"id": p["id"], "prompt": p["prompt"]} for p in prompts[:3]]},
            "teacher": cfg.teacher, "per_prompt": cfg.per_prompt, "decoding": cfg.decode.to_dict(),
            "n_candidates": cands.num_rows, "critic": critic, "counts": counts,
            "finish": {k: int(v) for k, v in zip(*np.unique(cands.column("finish").to_numpy(zero_copy_only=False),
                                                            return_counts=True))} if cands.num_rows else {},
            "examples": {"accepted": _examples(kept), "rejected": _examples(rejected),
                         "quarantined": _examples(excluded.filter(pc.equal(excluded.column("decision"), QUARANTINED)))}}


def finish_generate(cands: pa.Table, *, prompts: list[dict], cfg, out: str | Path, models: dict, config: dict,
                    crit=None, prob: np.ndarray | None = None, quarantined: dict | None = None,
                    extra: dict | None = None, before_commit=None) -> RunReport:
    """Decide every candidate and write the dataset (module doc); a finished identical run is returned as is."""
    h = config_hash(config)
    done = already_complete(out, h, config=config)
    if done is not None:
        return done
    dec, why, err = decide(cands, prob=prob, threshold=crit.threshold if crit is not None else None,
                           quarantined=quarantined or {})
    table = cands
    if prob is not None:
        table = table.append_column("score_critic", pa.array(prob, pa.float32()))
    dec_a = pa.array(dec, pa.string())
    decisions = pa.table({"sample_id": table.column("sample_id"), "decision": dec_a,
                          "reason": pa.array(why, pa.string()),
                          "stage": pa.array(["critic" if r == CRITIC_REJECT else "generate" for r in why], pa.string()),
                          "error": pa.array(err, pa.string()),
                          **({"score_critic": table.column("score_critic")} if prob is not None else {})})
    kept = table.filter(pc.equal(dec_a, KEPT))
    excluded = table.filter(pc.invert(pc.equal(dec_a, KEPT)))
    excluded = excluded.append_column("decision", decisions.column("decision").filter(pc.invert(pc.equal(dec_a, KEPT))))
    excluded = excluded.append_column("reason", decisions.column("reason").filter(pc.invert(pc.equal(dec_a, KEPT))))
    counts = {"candidates": cands.num_rows, "kept": kept.num_rows, "rejected": dec.count(REJECTED),
              "quarantined": dec.count(QUARANTINED)}
    section = _section(cands, prompts, cfg, kept, excluded, crit, counts)
    extra_cols = {f.name: f.type for f in kept.schema if f.name not in SHARD_SCHEMA.names}
    rows = conform(kept, SHARD_SCHEMA, extra=extra_cols)  # the shard columns (nulls: no soft labels yet) + ours
    output = Output(rows=rows, decisions=decisions, config=config, config_hash=h, models=models,
                    meta={"teacher": cfg.teacher, "kind": "generated", "decoding": cfg.decode.to_dict()},
                    extra={"generate": section, "methods": ["generate"] + (["critic"] if crit is not None else []),
                           "pool": {"spec": Path(cfg.prompts).name, "units": len(prompts),
                                    "description": "prompts the teacher continued (kdata generate)"},
                           **(extra or {})},
                    extra_files={EXCLUDED_FILE: lambda path: write_parquet(path, excluded)},
                    info={"generate": {k: section[k] for k in ("n_candidates", "counts", "critic")}, **(extra or {})})
    return write_output(out, output, before_commit=before_commit)
