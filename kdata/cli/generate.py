"""``kdata generate``: the teacher writes candidates from prompts; a critic filters them (Symbolic KD).

One run writes a candidates dataset (``kdata.pipeline.generate``); ``--rounds R`` runs I2D2 rounds
(``kdata.pipeline.generate_rounds``). The selection and training commands read the result as a text
pool: ``kdata select --pool OUT --teacher … --student … --method critic,…`` and ``kdata train``.
"""

from __future__ import annotations

import sys

from kdata.cli.common import emit_json, progress_printer
from kdata.core.warn import warn


def register(sub) -> None:
    from kdata.models.decoding import DecodeConfig

    d = DecodeConfig()
    p = sub.add_parser("generate", help="sample candidates from a teacher LM per prompt, optionally critic-filtered",
                       description="Sample --per-prompt continuations of every prompt in PROMPTS.jsonl (one JSON "
                                   "object per line: id, prompt) from the teacher, in prompt shards that a rerun "
                                   "resumes, and write them as a kdata dataset (Parquet shards, decisions, "
                                   "excluded.parquet, card, manifest). With --critic, rows the critic rejects are "
                                   "kept out with their score. With --rounds R (I2D2), the student trains on what "
                                   "passes and generates the next round.")
    p.add_argument("--teacher", default="builtin:text-teacher", help="causal LM: hf:PATH or builtin:text-teacher")
    p.add_argument("--prompts", required=True, metavar="PROMPTS.jsonl", help="one {\"id\": …, \"prompt\": …} per line")
    p.add_argument("--per-prompt", type=int, default=4, metavar="K", help="candidates per prompt")
    p.add_argument("--out", required=True, help="output dataset directory (with --rounds: the rounds' parent)")
    p.add_argument("--temperature", type=float, default=d.temperature, help="sampling temperature (> 0)")
    p.add_argument("--top-p", type=float, default=d.top_p, help="nucleus sampling mass (0, 1]")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="tokens per candidate at most")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seed; each candidate's sampler is seeded from (seed, prompt id, j), whatever the batch")
    p.add_argument("--batch-size", type=int, default=16, help="sequences sampled together")
    p.add_argument("--shard-size", type=int, default=64, help="prompts per resumable shard")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="model weights: auto = bf16 on CUDA, fp32 on CPU")
    p.add_argument("--student", default=None, help="student LM (hf:PATH / builtin:text-student): with --critic, "
                                                   "the student it was fitted with (its statistics are critic "
                                                   "features); with --rounds, the student to train")
    p.add_argument("--critic", default=None, metavar="DIR", help="text critic from `kdata critic fit` (filters)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--critic-recall", type=float, default=None, help="re-choose the critic's cut for this recall")
    g.add_argument("--critic-precision", type=float, default=None, help="… or for this precision")
    p.add_argument("--rounds", type=int, default=0, metavar="R",
                   help="I2D2: R rounds of generate → critic → train the student → generate from it (needs "
                        "--student and --critic); each round OUT/round-N/ with its card")
    p.add_argument("--epochs", type=int, default=None, help="with --rounds: training epochs per round")
    p.add_argument("--eval", default=None, help="with --rounds: held-out text for perplexity "
                                                "(default builtin:text-test; `none` to skip): it chooses "
                                                "the best round")
    p.add_argument("--test", default=None, metavar="TEXT", help="with --rounds: other held-out text, never used to "
                                                                "choose, for unbiased perplexities of the chosen, "
                                                                "last and starting students")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar on stderr (it is also off with --json or when stderr is not a terminal)")
    p.set_defaults(func=run)


def _config(args):
    from kdata.models.hf_generate import DecodeConfig
    from kdata.pipeline.generate import GenerateConfig

    return GenerateConfig(teacher=args.teacher, prompts=args.prompts, per_prompt=args.per_prompt,
                          decode=DecodeConfig(temperature=args.temperature, top_p=args.top_p,
                                              max_new_tokens=args.max_new_tokens, seed=args.seed),
                          shard_size=args.shard_size, precision=args.precision, student=args.student,
                          critic=args.critic, critic_recall=args.critic_recall,
                          critic_precision=args.critic_precision)


def run(args) -> int:
    from kdata.core.errors import KdataError
    from kdata.pipeline.generate import check_config, read_prompts
    from kdata.selection.critic_model import check_target

    cfg = _config(args)
    check_target(recall=cfg.critic_recall, precision=cfg.critic_precision, option="--critic-{}")
    if not cfg.critic and (cfg.critic_recall is not None or cfg.critic_precision is not None):
        raise KdataError("--critic-recall/--critic-precision re-choose a fitted critic's cut: give --critic DIR")
    check_unused(args)
    check_config(cfg)
    read_prompts(cfg.prompts)  # a bad prompts file is one line before any model loads
    if args.rounds:
        if not args.student:
            raise KdataError("--rounds needs --student (the model each round trains)")
        return _rounds(args, cfg)
    from kdata.pipeline.generate_run import run_generate

    report = run_generate(cfg, out=args.out, device=args.device, batch_size=args.batch_size,
                          progress=progress_printer(args.quiet or args.json))
    c = report.counts
    if args.json:
        emit_json(report.to_dict())
        if not c["kept"]:
            print(nothing_kept(c), file=sys.stderr)
        return 0
    print(f"kdata: {report.status}: {args.out}")
    print(f"  {c['n_in']} candidates: {c['kept']} kept, {c['rejected']} rejected, {c['quarantined']} quarantined"
          + (f" ({', '.join(f'{k} {v}' for k, v in c['rejected_by_reason'].items())})" if c['rejected'] else ""))
    crit = (report.info.get("generate") or {}).get("critic")
    if crit:
        print(f"  critic threshold {crit['threshold']:.4f} (validation precision {crit['val_precision']:.3f}, "
              f"recall {crit['val_recall']:.3f})")
    if not c["kept"]:
        print(nothing_kept(c), file=sys.stderr)
        return 0
    print(f"  next: kdata select --pool {args.out} --teacher {args.teacher} --student "
          f"{args.student or 'STUDENT'} --method random --budget 100%")
    return 0


def check_unused(args) -> None:
    """Options a run would ignore are one line, never silently dropped (nor hashed into the output)."""
    from kdata.core.errors import KdataError

    if args.rounds:
        return
    if args.student and not args.critic:
        raise KdataError(f"--student {args.student}: one generate run uses the student only for the critic's "
                         "features; give --critic DIR (or --rounds R to train it), or drop --student")
    used = [f for f, v in (("--epochs", args.epochs), ("--eval", args.eval), ("--test", args.test)) if v is not None]
    if used:
        raise KdataError(f"{'/'.join(used)}: only --rounds R trains a student (--epochs) and measures it "
                         "(--eval, --test); "
                         f"give --rounds, or drop {' and '.join(used)}")


def nothing_kept(c: dict) -> str:
    """The warning of a run that kept no candidate (instead of the next step's hint)."""
    why = [f"{c.get(k, 0)} {k}" + (f" ({', '.join(f'{r}: {n}' for r, n in (c.get(f'{k}_by_reason') or {}).items())})"
                                     if c.get(f"{k}_by_reason") else "") for k in ("rejected", "quarantined")]
    return (f"kdata: warning: no candidate was kept ({'; '.join(why)} of {c['n_in']}); there is nothing to "
            "select or train on — check the teacher's generations (excluded.parquet), lower the critic's cut "
            "(--critic-recall) or generate more (--per-prompt)")


def _rounds(args, cfg) -> int:
    from dataclasses import replace

    from kdata.pipeline.generate_rounds import run_rounds
    from kdata.training.text import TextTrainConfig

    tc = TextTrainConfig() if args.epochs is None else replace(TextTrainConfig(), epochs=args.epochs)
    ev = None if args.eval is None else ("" if args.eval == "none" else args.eval)
    result = run_rounds(cfg, out=args.out, rounds=args.rounds, student=args.student, device=args.device,
                        batch_size=args.batch_size, train_config=tc, eval_spec=ev, test_spec=args.test,
                        progress=progress_printer(args.quiet or args.json))
    if args.json:
        emit_json(result)
        return 0
    for r in result["rounds"]:
        c = r["counts"]
        ppl = r["perplexity_after"]
        print(f"kdata: round {r['round']}: {c['n_in']} candidates, {c['kept']} accepted → {r['student']}"
              + (f" (perplexity on {r['eval']}: {r['perplexity_before']:.1f} → {ppl:.1f})" if ppl is not None else ""))
    if result.get("stopped"):
        st = result["stopped"]
        print(f"kdata: round {st['round']}: {st['counts']['n_in']} candidates, 0 accepted — stopped ({st['why']})")
    best = result.get("best")
    print(f"  last student: {result['last_student']}")
    if best:
        print(f"  best student: {best['student']} (round {best['round']}, perplexity {best['perplexity']:.1f} on "
              f"{best['chosen_on']}, the set that chose it)")
    test = result.get("test")
    if test:
        print(f"  perplexity on {test['spec']} ({test['n']} texts, chose nothing): start "
              f"{test['perplexity_start']:.1f}, last {test['perplexity_last']:.1f}"
              + (f", best {test['perplexity_best']:.1f}" if "perplexity_best" in test else ""))
    elif best:
        print("  note: a figure on the set that chose the round is optimistic; --test TEXT measures the students "
              "on texts that chose nothing")
    if best and best["worse_rounds"]:
        warn(f"round(s) {', '.join(map(str, best['worse_rounds']))} raised the held-out perplexity; {best['message']}")
    return 0
