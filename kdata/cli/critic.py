"""``kdata critic fit`` / ``kdata critic apply``: an accept/reject critic (Symbolic KD, arXiv 2110.07178).

``--scores-from`` is a pool spec (scored with --teacher/--student, cached), a scores Parquet
written by kdata, or a bring-your-own predictions Parquet (see ``kdata/scoring/byo.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kdata.cli.common import emit_json


def register(sub) -> None:
    p = sub.add_parser("critic", help="fit or apply an accept/reject critic on embeddings + score features",
                       description="Fit a small classifier on a labelled accept/reject sample (CSV sample_id,accept) "
                                   "with its threshold chosen on a validation split for a target recall or "
                                   "precision; apply it to scores; use it in selection with --method critic,... "
                                   "--critic DIR.")
    cs = p.add_subparsers(dest="critic_command", metavar="{fit,apply}")
    f = cs.add_parser("fit", help="fit a critic from labelled samples")
    _source_options(f)
    f.add_argument("--labels", required=True, help="CSV with header sample_id,accept (1/0, true/false)")
    g = f.add_mutually_exclusive_group()
    g.add_argument("--recall", type=float, default=None, help="target recall of accepted samples (default 0.8)")
    g.add_argument("--precision", type=_cut_precision, default=None,
                   help="target precision instead of recall (the models' forward precision: --model-precision)")
    f.add_argument("--val-frac", type=float, default=0.3, help="validation fraction for the threshold (default 0.3)")
    f.add_argument("--no-embedding", action="store_true", help="use only the score features, not the embedding")
    f.add_argument("--embedder", default=None, metavar="hf:PATH",
                   help="text: a local transformers encoder (or sentence-transformers directory) whose mean-pooled "
                        "hidden states join the teacher/student statistics as features")
    f.add_argument("--out", required=True, help="directory for critic.npz + critic.json: new or empty; a critic "
                                                 "already there is refused unless it is this same fit, or --overwrite")
    f.add_argument("--overwrite", action="store_true", help="replace a critic fitted otherwise already in --out "
                                                            "(never a file or a directory of other files)")
    f.set_defaults(func=run_fit)
    a = cs.add_parser("apply", help="score samples with a fitted critic")
    a.add_argument("critic", help="critic directory (from `kdata critic fit`)")
    _source_options(a)
    g = a.add_mutually_exclusive_group()
    g.add_argument("--recall", type=float, default=None, help="re-choose the cut for this recall")
    g.add_argument("--precision", type=_cut_precision, default=None,
                   help="re-choose the cut for this precision (the models' forward precision: --model-precision)")
    a.add_argument("--out", required=True, help="output .csv or .parquet: sample_id, p_accept, accept")
    a.set_defaults(func=run_apply)
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])


def _cut_precision(text: str) -> float:
    """``kdata critic --precision``: the cut's target precision; ``auto``/``fp32``/``bf16`` name the right flag."""
    if text in ("auto", "fp32", "bf16"):
        raise argparse.ArgumentTypeError(f"in kdata critic, --precision is the accept cut's target precision "
                                         f"(a number in (0, 1]); for the models' {text} forward pass give "
                                         f"--model-precision {text}")
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None


def _source_options(p) -> None:
    p.add_argument("--scores-from", required=True, metavar="POOL|SCORES.parquet",
                   help="pool spec to score, a kdata scores Parquet, or a bring-your-own predictions Parquet")
    p.add_argument("--teacher", default="builtin:digits-teacher")
    p.add_argument("--student", default="builtin:digits-student")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--model-precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="text models' weights: auto = bf16 on CUDA, fp32 on CPU")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def check_options(args) -> None:
    """The option values of ``critic fit`` / ``apply``, one line each before any work."""
    from kdata.core.errors import KdataError
    from kdata.selection.critic_model import check_target, check_val_frac

    check_target(recall=args.recall, precision=args.precision, option="--{}")
    if getattr(args, "val_frac", None) is not None:
        check_val_frac(args.val_frac, option="--val-frac")
    if args.batch_size < 1:
        raise KdataError(f"--batch-size {args.batch_size}: must be an integer ≥ 1")


def open_source_pool(args, *, text: bool, critic: str | None = None):
    """The pool ``--scores-from`` (None for a scores Parquet), checked against the models' kind: one
    line for text models on images, image models (or an image critic) on text."""
    from kdata.core.errors import KdataError
    from kdata.pipeline.text import check_text_pool
    from kdata.pools.spec import open_pool
    from kdata.pools.text import payload_kind

    if not text and _is_scores_file(args.scores_from):
        return None
    pool = open_pool(args.scores_from)
    if text:
        check_text_pool(pool, spec=args.scores_from)
    elif payload_kind(pool) == "text":
        if critic:
            raise KdataError(f"{critic}: an image-score critic cannot score the text pool {args.scores_from} "
                             "(fit a text critic: kdata critic fit --teacher hf:PATH --student hf:PATH)")
        raise KdataError(f"{args.scores_from}: the pool holds text; image models cannot score it (give text "
                         "models: --teacher hf:PATH --student hf:PATH, or builtin:text-teacher / "
                         "builtin:text-student)")
    return pool


SCORE_COLUMNS = ("kl_ts", "teacher_logits", "teacher_topk_idx", "teacher_logprob")  # a scores table or predictions


def _is_scores_file(src: str) -> bool:
    """A Parquet file of scores (``kl_ts``) or bring-your-own predictions, whatever its name; a Parquet
    pool (images or text, no such column) is scored."""
    from pathlib import Path

    import pyarrow.parquet as pq

    if not Path(src).is_file():
        return False
    try:
        names = pq.read_schema(src).names
    except Exception:  # not Parquet: a pool file (JSONL…), opened as one
        return False
    return any(c in names for c in SCORE_COLUMNS)


def is_text(args) -> bool:
    """A text critic: the teacher is a text model (hf:PATH, builtin:text-*)."""
    from kdata.models.hf import is_text_spec

    return is_text_spec(args.teacher)


def load_text_source(args, pool=None, *, on_models=None):
    """(text scores table, texts, quarantined) of the pool ``--scores-from`` (``pool``: already open)
    under --teacher/--student (causal LMs, scored as ``kdata select`` scores a text pool, cached per unit);
    ``on_models(teacher, student)`` runs once they are loaded, before any scoring."""
    from kdata.models.base import pick_device
    from kdata.models.hf import load_text_model
    from kdata.scoring.text import TextScoreConfig, score_text_pool, text_models
    from kdata.selection.critic_text import texts_from_pool

    pool = pool if pool is not None else open_source_pool(args, text=True)
    device = pick_device(args.device)
    models = text_models(*(load_text_model(s, device=device, precision=args.model_precision)
                           for s in (args.teacher, args.student)))
    if models.kind != "causal_lm":
        from kdata.core.errors import KdataError

        raise KdataError(f"--teacher {args.teacher}: a text critic scores generated text with causal LMs")
    if on_models is not None:
        on_models(models.teacher, models.student)
    scores, quarantined, _ = score_text_pool(pool, models, config=TextScoreConfig(batch_size=args.batch_size),
                                             device=device)
    return scores, texts_from_pool(pool, scores.column("sample_id").to_pylist()), quarantined


def load_source(args, pool=None, *, on_models=None):
    """(scores table, quarantined [(sample_id, reason)]) for ``--scores-from`` (``pool``: already open by
    ``open_source_pool``; a scores Parquet has no quarantined rows, and no models: ``on_models(teacher,
    student)`` runs only when they are loaded, before any scoring)."""
    from pathlib import Path

    import pyarrow.parquet as pq

    src = args.scores_from
    path = Path(src)
    if pool is None and _is_scores_file(src):
        schema = pq.read_schema(path)
        if "kl_ts" in schema.names:
            return pq.read_table(path), []
        from kdata.scoring.byo import load_scores

        return load_scores(str(path))[0], []
    from kdata.models.spec import load_model, pick_device
    from kdata.scoring.score import ScoreConfig, check_models, score_pool

    pool = pool if pool is not None else open_source_pool(args, text=False)
    device = pick_device(args.device)
    teacher, student = load_model(args.teacher, device=device), load_model(args.student, device=device)
    check_models(teacher, student)
    if on_models is not None:
        on_models(teacher, student)
    scores, quarantined, _ = score_pool(pool, teacher, student, config=ScoreConfig(batch_size=args.batch_size),
                                        device=device)
    return scores, quarantined


def by_reason(quarantined) -> dict[str, int]:
    """Quarantined rows counted by the kind of their reason (``too_long: N chars > M`` → ``too_long``)."""
    from collections import Counter

    return dict(Counter(str(r).split(":", 1)[0] for _, r, *_ in quarantined).most_common())


def _reasons_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


FIT_OPTIONS = ("teacher", "student", "recall", "precision", "val_frac", "no_embedding", "embedder", "model_precision")


def run_fit(args) -> int:
    import numpy as np
    import pyarrow as pa

    from kdata.selection.critic_checks import model_record
    from kdata.selection.critic_files import check_critic_out, fit_key
    from kdata.selection.critic_model import check_val_frac, feature_matrix, fit_critic, read_labels

    check_options(args)
    text = is_text(args)
    if args.embedder and not text:
        from kdata.core.errors import KdataError

        raise KdataError(f"--embedder {args.embedder}: sentence embeddings are features of a text critic (--teacher "
                         "hf:PATH / builtin:text-teacher); this critic is fitted on image scores")
    labels = read_labels(args.labels)
    fitted_with = {"scores_file": args.scores_from}  # a scores Parquet: kdata cannot know its models
    if Path(args.scores_from).is_file():  # …but records which file it was, byte for byte
        from kdata.core.atomic import sha256_file

        fitted_with["scores_sha256"] = sha256_file(args.scores_from)
    fit = fit_key(args.labels, source=args.scores_from, source_sha256=fitted_with.get("scores_sha256"),
                  options={k: getattr(args, k) for k in FIT_OPTIONS})
    check_critic_out(args.out, fit=fit, overwrite=args.overwrite)  # before any scoring (a file, a foreign directory…)
    pool = open_source_pool(args, text=text)
    # before any model loads: labels from another pool are named as such, then the split is checked on
    # the labelled rows the source holds (those scored can only be fewer: checked again when fitting)
    check_val_frac(args.val_frac, n=_labelled_found(args, pool, labels), option="--val-frac")

    def record(teacher, student) -> None:  # the models' specs and checksums, once loaded
        fitted_with.clear()
        fitted_with.update(model_record(teacher, student))

    if text:
        scores, texts, quarantined = load_text_source(args, pool, on_models=record)
    else:
        (scores, quarantined), texts = load_source(args, pool, on_models=record), None
    ids = scores.column("sample_id").to_pylist()
    rows = [i for i, s in enumerate(ids) if s in labels]
    unscored = _labelled_unscored(args, labels, quarantined, found=len(rows))
    sub = scores.take(pa.array(rows))
    if text:
        from kdata.selection.critic_text import text_feature_matrix

        X, names = text_feature_matrix(sub, embedder=args.embedder, texts=[texts[i] for i in rows],
                                       device=_device(args))
    else:
        X, names = feature_matrix(sub, embedding=False if args.no_embedding else None)
    y = np.array([labels[ids[i]] for i in rows])
    recall = args.recall if args.recall is not None or args.precision is not None else 0.8
    crit = fit_critic(X, y, feature_names=names, recall=recall, precision=args.precision, val_frac=args.val_frac)
    if text:
        from kdata.selection.critic_text import embedder_info

        crit.text = {"kind": "text", **fitted_with,
                     **(embedder_info(args.embedder, device=_device(args)) if args.embedder else {})}
    else:
        crit.models = fitted_with
    crit.save(args.out, fit=fit)
    out = {"out": args.out, "n_labelled": len(rows), **unscored, "features": len(names),
           "threshold": crit.threshold, "target": crit.target, **crit.metrics}
    if args.json:
        emit_json(out)
    else:
        print(f"kdata: critic written to {args.out}")
        print(f"  fitted on {len(rows)} labelled samples ({int(y.sum())} accept), {len(names)} features"
              + _unscored_text(unscored))
        print(f"  threshold {crit.threshold:.4f} for {crit.target}: validation recall {crit.metrics['val_recall']:.3f}, "
              f"precision {crit.metrics['val_precision']:.3f} on {crit.metrics['val_n']} samples "
              f"({crit.metrics['estimate']})")
    return 0


def _labelled_found(args, pool, labels: dict) -> int:
    """How many labelled ids the source holds, read without payloads; one line when it holds none."""
    import pyarrow.parquet as pq

    from kdata.core.errors import KdataError

    try:
        if pool is None:  # a scores Parquet
            ids = pq.read_table(args.scores_from, columns=["sample_id"]).column("sample_id").to_pylist()
        else:
            ids = [i for u in pool.units for i in u.sample_ids().to_pylist()]
    except (OSError, ValueError, KeyError, KdataError):
        return len(labels)  # unreadable here: the scoring step says why in its own line
    found = len(set(labels) & {str(i) for i in ids})
    if not found:
        raise KdataError(f"{args.labels}: none of the labelled sample ids are in {args.scores_from}")
    return found


def _labelled_unscored(args, labels: dict, quarantined, *, found: int) -> dict:
    """The labelled ids that were not scored: ``n_quarantined`` (in the pool, quarantined: by reason)
    and ``n_missing`` (not in it at all); one line when no labelled id was scored."""
    from kdata.core.errors import KdataError

    q = [(sid, r) for sid, r, *_ in (quarantined or []) if sid in labels]
    out = {"n_quarantined": len(q), "quarantined_by_reason": by_reason(q),
           "n_missing": len(labels) - found - len({sid for sid, _ in q})}
    if not found:
        if q:
            raise KdataError(f"{args.labels}: none of the labelled sample ids could be scored in {args.scores_from}: "
                             f"{len(q)} quarantined ({_reasons_text(out['quarantined_by_reason'])}), "
                             f"{out['n_missing']} not found")
        raise KdataError(f"{args.labels}: none of the labelled sample ids are in {args.scores_from}")
    return out


def _unscored_text(unscored: dict) -> str:
    q, m = unscored["n_quarantined"], unscored["n_missing"]
    return ((f"; {q} labelled ids quarantined ({_reasons_text(unscored['quarantined_by_reason'])}), not used"
             if q else "") + (f"; {m} labelled ids not found" if m else ""))


def run_apply(args) -> int:
    from kdata.core.atomic import write_parquet
    from kdata.selection.critic_checks import check_fitted_models
    from kdata.selection.critic_model import load_critic

    check_options(args)
    if not str(args.out).endswith((".csv", ".parquet")):
        from kdata.core.errors import KdataError

        raise KdataError(f"--out {args.out}: expected a .csv or .parquet file name (it decides the format)")
    crit = load_critic(args.critic).with_target(recall=args.recall, precision=args.precision)
    fitted = lambda t, s: check_fitted_models(args.critic, crit, teacher=t, student=s)  # noqa: E731
    if crit.is_text:
        if not is_text(args):  # the models the critic was fitted with, unless others are given
            args.teacher, args.student = crit.text.get("teacher"), crit.text.get("student")
        pool = open_source_pool(args, text=True)
        scores, texts, quarantined = load_text_source(args, pool, on_models=fitted)
        prob = crit.score(scores, texts=texts, device=_device(args))
    else:
        pool = open_source_pool(args, text=False, critic=args.critic)
        (scores, quarantined), texts = load_source(args, pool, on_models=fitted), None
        prob = crit.score(scores)
    acc = prob >= crit.threshold
    table = apply_table(scores, prob, acc, texts=texts, quarantined=quarantined, pool=pool)
    if str(args.out).endswith(".csv"):
        import pyarrow.csv as pcsv

        from kdata.core.atomic import atomic_path

        with atomic_path(args.out) as tmp:
            pcsv.write_csv(table, tmp)
    else:
        write_parquet(args.out, table)
    q = by_reason(quarantined)
    out = {"out": args.out, "n": table.num_rows, "scored": len(prob), "accepted": int(acc.sum()),
           "quarantined": len(quarantined), "quarantined_by_reason": q, "threshold": crit.threshold}
    if args.json:
        emit_json(out)
    else:
        print(f"kdata: {int(acc.sum())} of {len(prob)} scored accepted (threshold {crit.threshold:.4f}) → {args.out}"
              + (f"; {len(quarantined)} not scored, written with p_accept null ({_reasons_text(q)})"
                 if quarantined else ""))
    return 0


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
        cols["text"] = pa.array(list(texts) + _pool_texts(pool, qids), pa.string())
    return pa.table(cols)


def _pool_texts(pool, ids: list[str]) -> list[str | None]:
    """The ``text`` of each id in the pool (None where the pool holds no text for it); only their rows are read."""
    want, found = set(ids), {}
    if want:
        for unit in pool.units:
            t = unit.take_ids(want)
            if "text" in t.column_names:
                found.update(zip(t.column("sample_id").to_pylist(), t.column("text").to_pylist()))
    return [found.get(i) for i in ids]


def _device(args):
    from kdata.models.base import pick_device

    return pick_device(args.device)
