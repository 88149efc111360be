"""Fit and apply an accept/reject critic on a scored source (``kdata critic fit`` / ``apply``).

Symbolic Knowledge Distillation (West et al., NAACL 2022, arXiv 2110.07178) filters generated
candidates with a critic fitted on a small human-labelled accept/reject sample. The source is a
pool spec (scored with the teacher and student, cached per unit as ``kdata select`` scores it), a
scores Parquet written by kdata, or a bring-your-own predictions Parquet
(``kdata.scoring.byo``). The CLI only parses options and prints what these functions return.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from kdata.core.errors import KdataError

# a scores table or bring-your-own predictions has one of these; a Parquet pool has none
SCORE_COLUMNS = ("kl_ts", "teacher_logits", "teacher_topk_idx", "teacher_logprob")
FIT_OPTIONS = ("teacher", "student", "recall", "precision", "val_frac", "no_embedding", "embedder", "model_precision")


@dataclass(frozen=True)
class CriticSource:
    """Where a critic's rows and their scores come from: ``spec`` (``--scores-from``) and the models that
    score it (unused for a scores Parquet)."""

    spec: str
    teacher: str = "builtin:digits-teacher"
    student: str = "builtin:digits-student"
    device: str = "auto"
    batch_size: int = 256
    model_precision: str = "auto"  # text models' weights: bf16 on CUDA, fp32 on CPU

    @property
    def text(self) -> bool:
        """A text critic: the teacher is a text model (hf:PATH, builtin:text-*)."""
        from kdata.models.hf import is_text_spec

        return is_text_spec(self.teacher)


def is_scores_file(src: str) -> bool:
    """A Parquet file of scores (``kl_ts``) or bring-your-own predictions, whatever its name; a Parquet
    pool (images or text, no such column) is scored."""
    import pyarrow.parquet as pq

    if not Path(src).is_file():
        return False
    try:
        names = pq.read_schema(src).names
    except Exception:  # not Parquet: a pool file (JSONL…), opened as one
        return False
    return any(c in names for c in SCORE_COLUMNS)


def open_source_pool(src: CriticSource, *, text: bool, critic: str | None = None):
    """The pool ``src.spec`` (None for a scores Parquet), checked against the models' kind: one line for
    text models on images, image models (or an image critic) on text."""
    from kdata.pipeline.text import check_text_pool
    from kdata.pools.spec import open_pool
    from kdata.pools.text import payload_kind

    if not text and is_scores_file(src.spec):
        return None
    pool = open_pool(src.spec)
    if text:
        check_text_pool(pool, spec=src.spec)
    elif payload_kind(pool) == "text":
        if critic:
            raise KdataError(f"{critic}: an image-score critic cannot score the text pool {src.spec} "
                             "(fit a text critic: kdata critic fit --teacher hf:PATH --student hf:PATH)")
        raise KdataError(f"{src.spec}: the pool holds text; image models cannot score it (give text "
                         "models: --teacher hf:PATH --student hf:PATH, or builtin:text-teacher / "
                         "builtin:text-student)")
    return pool


def load_text_source(src: CriticSource, pool=None, *, on_models=None):
    """(text scores table, texts, quarantined) of the text pool (``pool``: already open) under the causal
    LMs ``src`` names, scored as ``kdata select`` scores a text pool; ``on_models(teacher, student)`` runs
    once they are loaded, before any scoring."""
    from kdata.models.base import pick_device
    from kdata.models.hf import load_text_model
    from kdata.scoring.text import TextScoreConfig, score_text_pool, text_models
    from kdata.selection.critic_text import texts_from_pool

    pool = pool if pool is not None else open_source_pool(src, text=True)
    device = pick_device(src.device)
    models = text_models(*(load_text_model(s, device=device, precision=src.model_precision)
                           for s in (src.teacher, src.student)))
    if models.kind != "causal_lm":
        raise KdataError(f"--teacher {src.teacher}: a text critic scores generated text with causal LMs")
    if on_models is not None:
        on_models(models.teacher, models.student)
    scores, quarantined, _ = score_text_pool(pool, models, config=TextScoreConfig(batch_size=src.batch_size),
                                             device=device)
    return scores, texts_from_pool(pool, scores.column("sample_id").to_pylist()), quarantined


def load_source(src: CriticSource, pool=None, *, on_models=None):
    """(scores table, quarantined [(sample_id, reason)]) of ``src`` (``pool``: already open by
    ``open_source_pool``; a scores Parquet has no quarantined rows, and no models: ``on_models(teacher,
    student)`` runs only when they are loaded, before any scoring)."""
    import pyarrow.parquet as pq

    if pool is None and is_scores_file(src.spec):
        if "kl_ts" in pq.read_schema(src.spec).names:
            return pq.read_table(src.spec), []
        from kdata.scoring.byo import load_scores

        return load_scores(str(src.spec))[0], []
    from kdata.models.spec import load_model, pick_device
    from kdata.scoring.score import ScoreConfig, check_models, score_pool

    pool = pool if pool is not None else open_source_pool(src, text=False)
    device = pick_device(src.device)
    teacher, student = load_model(src.teacher, device=device), load_model(src.student, device=device)
    check_models(teacher, student)
    if on_models is not None:
        on_models(teacher, student)
    scores, quarantined, _ = score_pool(pool, teacher, student, config=ScoreConfig(batch_size=src.batch_size),
                                        device=device)
    return scores, quarantined


def by_reason(quarantined) -> dict[str, int]:
    """Quarantined rows counted by the kind of their reason (``too_long: N chars > M`` → ``too_long``)."""
    from collections import Counter

    return dict(Counter(str(r).split(":", 1)[0] for _, r, *_ in quarantined).most_common())


def reasons_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


# long: the fit in the order its checks must run (options, out, labels, split) before any model loads
def fit_critic_on(src: CriticSource, *, labels: str, out: str, recall: float | None = None,
                  precision: float | None = None, val_frac: float = 0.3, no_embedding: bool = False,
                  embedder: str | None = None, overwrite: bool = False) -> dict:
    """Fit a critic on the ``labels`` CSV (sample_id, accept) over ``src``'s scores and save it to ``out``;
    returns what was fitted (counts, features, threshold, target and the validation figures)."""
    import numpy as np
    import pyarrow as pa

    from kdata.selection.critic_checks import model_record
    from kdata.selection.critic_files import check_critic_out, fit_key
    from kdata.selection.critic_model import check_val_frac, feature_matrix, fit_critic, read_labels

    text = src.text
    if embedder and not text:
        raise KdataError(f"--embedder {embedder}: sentence embeddings are features of a text critic (--teacher "
                         "hf:PATH / builtin:text-teacher); this critic is fitted on image scores")
    accept = read_labels(labels)
    fitted_with = {"scores_file": src.spec}  # a scores Parquet: kdata cannot know its models
    if Path(src.spec).is_file():  # …but records which file it was, byte for byte
        from kdata.core.atomic import sha256_file

        fitted_with["scores_sha256"] = sha256_file(src.spec)
    given = {"teacher": src.teacher, "student": src.student, "recall": recall, "precision": precision,
             "val_frac": val_frac, "no_embedding": no_embedding, "embedder": embedder,
             "model_precision": src.model_precision}
    fit = fit_key(labels, source=src.spec, source_sha256=fitted_with.get("scores_sha256"),
                  options={k: given[k] for k in FIT_OPTIONS})
    check_critic_out(out, fit=fit, overwrite=overwrite)  # before any scoring (a file, a foreign directory…)
    pool = open_source_pool(src, text=text)
    # before any model loads: labels from another pool are named as such, then the split is checked on
    # the labelled rows the source holds (those scored can only be fewer: checked again when fitting)
    check_val_frac(val_frac, n=labelled_found(src, pool, accept, labels=labels), option="--val-frac")

    def record(teacher, student) -> None:  # the models' specs and checksums, once loaded
        fitted_with.clear()
        fitted_with.update(model_record(teacher, student))

    if text:
        scores, texts, quarantined = load_text_source(src, pool, on_models=record)
    else:
        (scores, quarantined), texts = load_source(src, pool, on_models=record), None
    ids = scores.column("sample_id").to_pylist()
    rows = [i for i, s in enumerate(ids) if s in accept]
    unscored = labelled_unscored(src, accept, quarantined, found=len(rows), labels=labels)
    sub = scores.take(pa.array(rows))
    if text:
        from kdata.models.base import pick_device
        from kdata.selection.critic_text import embedder_info, text_feature_matrix

        device = pick_device(src.device)
        X, names = text_feature_matrix(sub, embedder=embedder, texts=[texts[i] for i in rows], device=device)
    else:
        X, names = feature_matrix(sub, embedding=False if no_embedding else None)
    y = np.array([accept[ids[i]] for i in rows])
    target_recall = recall if recall is not None or precision is not None else 0.8
    crit = fit_critic(X, y, feature_names=names, recall=target_recall, precision=precision, val_frac=val_frac)
    if text:
        crit.text = {"kind": "text", **fitted_with, **(embedder_info(embedder, device=device) if embedder else {})}
    else:
        crit.models = fitted_with
    crit.save(out, fit=fit)
    return {"out": out, "n_labelled": len(rows), "n_accept": int(y.sum()), **unscored, "features": len(names),
            "threshold": crit.threshold, "target": crit.target, **crit.metrics}


def labelled_found(src: CriticSource, pool, accept: dict, *, labels: str) -> int:
    """How many labelled ids the source holds, read without payloads; one line when it holds none."""
    import pyarrow.parquet as pq

    try:
        if pool is None:  # a scores Parquet
            ids = pq.read_table(src.spec, columns=["sample_id"]).column("sample_id").to_pylist()
        else:
            ids = [i for u in pool.units for i in u.sample_ids().to_pylist()]
    except (OSError, ValueError, KeyError, KdataError):
        return len(accept)  # unreadable here: the scoring step says why in its own line
    found = len(set(accept) & {str(i) for i in ids})
    if not found:
        raise KdataError(f"{labels}: none of the labelled sample ids are in {src.spec}")
    return found


def labelled_unscored(src: CriticSource, accept: dict, quarantined, *, found: int, labels: str) -> dict:
    """The labelled ids that were not scored: ``n_quarantined`` (in the pool, quarantined: by reason)
    and ``n_missing`` (not in it at all); one line when no labelled id was scored."""
    q = [(sid, r) for sid, r, *_ in (quarantined or []) if sid in accept]
    out = {"n_quarantined": len(q), "quarantined_by_reason": by_reason(q),
           "n_missing": len(accept) - found - len({sid for sid, _ in q})}
    if not found:
        if q:
            raise KdataError(f"{labels}: none of the labelled sample ids could be scored in {src.spec}: "
                             f"{len(q)} quarantined ({reasons_text(out['quarantined_by_reason'])}), "
                             f"{out['n_missing']} not found")
        raise KdataError(f"{labels}: none of the labelled sample ids are in {src.spec}")
    return out


def apply_critic_to(src: CriticSource, *, critic: str, out: str, recall: float | None = None,
                    precision: float | None = None, text_models_given: bool = False) -> dict:
    """Score ``src`` with the critic in ``critic`` (its cut re-chosen for ``recall`` / ``precision`` when
    given) and write one row per candidate to ``out`` (.csv or .parquet, ``apply_table``). A text critic
    scores with the models it was fitted with unless ``text_models_given``. Returns the counts."""
    from kdata.core.atomic import write_parquet
    from kdata.selection.critic_checks import check_fitted_models
    from kdata.selection.critic_model import load_critic

    if not str(out).endswith((".csv", ".parquet")):
        raise KdataError(f"--out {out}: expected a .csv or .parquet file name (it decides the format)")
    crit = load_critic(critic).with_target(recall=recall, precision=precision)
    fitted = lambda t, s: check_fitted_models(critic, crit, teacher=t, student=s)  # noqa: E731
    if crit.is_text:
        if not text_models_given:  # the models the critic was fitted with, unless others are given
            src = replace(src, teacher=crit.text.get("teacher"), student=crit.text.get("student"))
        pool = open_source_pool(src, text=True)
        scores, texts, quarantined = load_text_source(src, pool, on_models=fitted)
        from kdata.models.base import pick_device

        prob = crit.score(scores, texts=texts, device=pick_device(src.device))
    else:
        pool = open_source_pool(src, text=False, critic=critic)
        (scores, quarantined), texts = load_source(src, pool, on_models=fitted), None
        prob = crit.score(scores)
    acc = prob >= crit.threshold
    table = apply_table(scores, prob, acc, texts=texts, quarantined=quarantined, pool=pool)
    if str(out).endswith(".csv"):
        import pyarrow.csv as pcsv

        from kdata.core.atomic import atomic_path

        with atomic_path(out) as tmp:
            pcsv.write_csv(table, tmp)
    else:
        write_parquet(out, table)
    return {"out": out, "n": table.num_rows, "scored": len(prob), "accepted": int(acc.sum()),
            "quarantined": len(quarantined), "quarantined_by_reason": by_reason(quarantined),
            "threshold": crit.threshold}


def apply_table(scores, prob, acc, *, texts, quarantined, pool):
    """``critic apply``'s rows: every scored candidate (``reason`` null if accepted, else ``critic_reject``),
    then every quarantined one (``p_accept`` null, ``accept`` false, ``reason`` its quarantine reason);
    ``text`` for text pools (null where the pool holds none)."""
    import numpy as np
    import pyarrow as pa

    qids = [str(sid) for sid, *_ in quarantined]
    cols = {"sample_id": pa.concat_arrays([scores.column("sample_id").combine_chunks().cast(pa.string()),
                                           pa.array(qids, pa.string())]),
            "p_accept": pa.concat_arrays([pa.array(prob, pa.float32()), pa.nulls(len(qids), pa.float32())]),
            "accept": pa.concat_arrays([pa.array(np.asarray(acc, dtype=bool)),
                                        pa.array([False] * len(qids), pa.bool_())]),
            "reason": pa.array([None if a else "critic_reject" for a in acc] + [str(r) for _, r, *_ in quarantined],
                               pa.string())}
    if texts is not None:
        cols["text"] = pa.array(list(texts) + pool_texts(pool, qids), pa.string())
    return pa.table(cols)


def pool_texts(pool, ids: list[str]) -> list[str | None]:
    """The ``text`` of each id in the pool (None where the pool holds no text for it); only their rows are read."""
    want, found = set(ids), {}
    if want:
        for unit in pool.units:
            t = unit.take_ids(want)
            if "text" in t.column_names:
                found.update(zip(t.column("sample_id").to_pylist(), t.column("text").to_pylist()))
    return [found.get(i) for i in ids]
