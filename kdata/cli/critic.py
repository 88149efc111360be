"""``kdata critic fit`` / ``kdata critic apply``: an accept/reject critic (Symbolic KD, arXiv 2110.07178).

``--scores-from`` is a pool spec (scored with --teacher/--student, cached), a scores Parquet
written by kdata, or a bring-your-own predictions Parquet (see ``kdata/scoring/byo.py``).
"""

from __future__ import annotations

import argparse
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


def source(args):
    """The ``CriticSource`` the options name."""
    from kdata.pipeline.critic import CriticSource

    return CriticSource(args.scores_from, teacher=args.teacher, student=args.student, device=args.device,
                        batch_size=args.batch_size, model_precision=args.model_precision)


def run_fit(args) -> int:
    from kdata.pipeline.critic import fit_critic_on

    check_options(args)
    out = fit_critic_on(source(args), labels=args.labels, out=args.out, recall=args.recall, precision=args.precision,
                        val_frac=args.val_frac, no_embedding=args.no_embedding, embedder=args.embedder,
                        overwrite=args.overwrite)
    n_accept = out.pop("n_accept")
    if args.json:
        emit_json(out)
    else:
        print(f"kdata: critic written to {args.out}")
        print(f"  fitted on {out['n_labelled']} labelled samples ({n_accept} accept), {out['features']} features"
              + _unscored_text(out))
        print(f"  threshold {out['threshold']:.4f} for {out['target']}: validation recall {out['val_recall']:.3f}, "
              f"precision {out['val_precision']:.3f} on {out['val_n']} samples ({out['estimate']})")
    return 0


def _unscored_text(unscored: dict) -> str:
    from kdata.pipeline.critic import reasons_text

    q, m = unscored["n_quarantined"], unscored["n_missing"]
    return ((f"; {q} labelled ids quarantined ({reasons_text(unscored['quarantined_by_reason'])}), not used"
             if q else "") + (f"; {m} labelled ids not found" if m else ""))


def run_apply(args) -> int:
    from kdata.pipeline.critic import apply_critic_to, reasons_text

    check_options(args)
    src = source(args)
    out = apply_critic_to(src, critic=args.critic, out=args.out, recall=args.recall, precision=args.precision,
                          text_models_given=src.text)
    if args.json:
        emit_json(out)
    else:
        q = out["quarantined"]
        print(f"kdata: {out['accepted']} of {out['scored']} scored accepted (threshold {out['threshold']:.4f}) → "
              f"{args.out}" + (f"; {q} not scored, written with p_accept null "
                                f"({reasons_text(out['quarantined_by_reason'])})" if q else ""))
    return 0
