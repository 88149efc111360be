"""``kdata critic fit`` / ``kdata critic apply``: an accept/reject critic (Symbolic KD, arXiv 2110.07178).

``--scores-from`` is a pool spec (scored with --teacher/--student, cached), a scores Parquet
written by kdata, or a bring-your-own predictions Parquet (see ``kdata/byo.py``).
"""

from __future__ import annotations

import sys

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
    g.add_argument("--precision", type=float, default=None, help="target precision instead of recall")
    f.add_argument("--val-frac", type=float, default=0.3, help="validation fraction for the threshold (default 0.3)")
    f.add_argument("--no-embedding", action="store_true", help="use only the score features, not the embedding")
    f.add_argument("--out", required=True, help="directory for critic.npz + critic.json")
    f.set_defaults(func=run_fit)
    a = cs.add_parser("apply", help="score samples with a fitted critic")
    a.add_argument("critic", help="critic directory (from `kdata critic fit`)")
    _source_options(a)
    a.add_argument("--recall", type=float, default=None, help="re-choose the cut for this recall")
    a.add_argument("--precision", type=float, default=None, help="re-choose the cut for this precision")
    a.add_argument("--out", required=True, help="output .csv or .parquet: sample_id, p_accept, accept")
    a.set_defaults(func=run_apply)
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])


def _source_options(p) -> None:
    p.add_argument("--scores-from", required=True, metavar="POOL|SCORES.parquet",
                   help="pool spec to score, a kdata scores Parquet, or a bring-your-own predictions Parquet")
    p.add_argument("--teacher", default="builtin:digits-teacher")
    p.add_argument("--student", default="builtin:digits-student")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def load_source(args):
    """Scores table for ``--scores-from``."""
    from pathlib import Path

    import pyarrow.parquet as pq

    src = args.scores_from
    path = Path(src)
    if path.is_file() and path.suffix == ".parquet":
        schema = pq.read_schema(path)
        if "kl_ts" in schema.names:
            return pq.read_table(path)
        from kdata.scoring.byo import load_scores

        return load_scores(str(path))[0]
    from kdata.models.spec import pick_device
    from kdata.models.spec import load_model
    from kdata.pools.spec import open_pool
    from kdata.scoring.score import ScoreConfig, check_models, score_pool

    pool = open_pool(src)
    device = pick_device(args.device)
    teacher, student = load_model(args.teacher, device=device), load_model(args.student, device=device)
    check_models(teacher, student)
    scores, _, _ = score_pool(pool, teacher, student, config=ScoreConfig(batch_size=args.batch_size), device=device)
    return scores


def run_fit(args) -> int:
    import numpy as np
    import pyarrow as pa

    from kdata.selection.critic_model import feature_matrix, fit_critic, read_labels
    from kdata.core.errors import KdataError

    labels = read_labels(args.labels)
    scores = load_source(args)
    ids = scores.column("sample_id").to_pylist()
    rows = [i for i, s in enumerate(ids) if s in labels]
    missing = len(labels) - len(rows)
    if not rows:
        raise KdataError(f"{args.labels}: none of the labelled sample ids are in {args.scores_from}")
    sub = scores.take(pa.array(rows))
    X, names = feature_matrix(sub, embedding=False if args.no_embedding else None)
    y = np.array([labels[ids[i]] for i in rows])
    recall = args.recall if args.recall is not None or args.precision is not None else 0.8
    crit = fit_critic(X, y, feature_names=names, recall=recall, precision=args.precision, val_frac=args.val_frac)
    crit.save(args.out)
    out = {"out": args.out, "n_labelled": len(rows), "n_missing": missing, "features": len(names),
           "threshold": crit.threshold, "target": crit.target, **crit.metrics}
    if args.json:
        emit_json(out)
    else:
        print(f"kdata: critic written to {args.out}")
        print(f"  fitted on {len(rows)} labelled samples ({int(y.sum())} accept), {len(names)} features"
              + (f"; {missing} labelled ids not found" if missing else ""))
        print(f"  threshold {crit.threshold:.4f} for {crit.target}: validation recall {crit.metrics['val_recall']:.3f}, "
              f"precision {crit.metrics['val_precision']:.3f} on {crit.metrics['val_n']} samples")
    return 0


def run_apply(args) -> int:
    import pyarrow as pa

    from kdata.core.atomic import write_parquet
    from kdata.selection.critic_model import load_critic

    crit = load_critic(args.critic).with_target(recall=args.recall, precision=args.precision)
    scores = load_source(args)
    prob = crit.score(scores)
    acc = prob >= crit.threshold
    table = pa.table({"sample_id": scores.column("sample_id"), "p_accept": pa.array(prob, pa.float32()),
                      "accept": pa.array(acc)})
    if str(args.out).endswith(".csv"):
        import pyarrow.csv as pcsv

        from kdata.core.atomic import atomic_path

        with atomic_path(args.out) as tmp:
            pcsv.write_csv(table, tmp)
    else:
        write_parquet(args.out, table)
    out = {"out": args.out, "n": len(prob), "accepted": int(acc.sum()), "threshold": crit.threshold}
    if args.json:
        emit_json(out)
    else:
        print(f"kdata: {int(acc.sum())} of {len(prob)} accepted (threshold {crit.threshold:.4f}) → {args.out}")
    return 0
