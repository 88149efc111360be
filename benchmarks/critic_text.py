"""What the text critic buys (Symbolic KD, arXiv 2110.07178): a student distilled on critic-filtered
generations vs on an equal number of unfiltered generations, held-out perplexity, 3 seeds.

Setup, all built in (nothing downloaded): the teacher ``builtin:text-teacher`` writes
``--per-prompt`` continuations (temperature ``--temperature``, top-p 0.95) of prompts made from
the first words of ``builtin:text-web`` rows (the noisy pool); the student is ``builtin:text-student``;
the critic's embedder is ``builtin:text-reference`` (mean-pooled hidden states).

**Labels are automatic, not human.** Symbolic KD trains its critic on human accept/reject
judgements; here a *held-out judge* stands in for the humans: a candidate is accepted when at
least ``--judge-rate`` (0.45) of its words are words of the clean training corpus the teacher was
trained on (``kdata.models.builtin_text.corpus("train")``: a "reads like real text" rule that uses
no model and never sees ``builtin:text-test``). The critic sees a random ``--label-frac`` (40%)
of the candidates with these labels, is fitted by ``kdata critic fit`` (teacher/student statistics +
embedding, cut for recall 0.8 on its validation split), and filters all candidates.

Arms, per seed: *critic* = every candidate the critic accepts; *unfiltered* = as many candidates
drawn at random (seeded) from all the candidates the critic scored (non-empty, scorable). Each arm
goes through ``kdata select --method random --budget 100%`` (the teacher's per-token soft labels)
and the text trainer (equal rows, equal epochs); the number is the student's perplexity on
``builtin:text-test``. Seeds change the unfiltered draw and the training shuffle.

    python benchmarks/critic_text.py --quick     # ~20 s on 2 CPU cores; writes nothing
    python benchmarks/critic_text.py             # the full table (more prompts, epochs; ~1 minute)

Unless ``--quick`` or ``--no-write``, the table is spliced into ``docs/benchmarks/critic_text.md``
(``benchmarks/doc_tables.py``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import runpy
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from kdata.cli import main as kdata
from kdata.core.atomic import write_parquet
from kdata.dataset.writer import read_shards

WORD = re.compile(r"[A-Za-z]+")
HERE = Path(__file__).resolve().parent
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def judge(texts: list[str], vocab: set[str], *, rate: float) -> np.ndarray:
    """The stand-in for human labels (module doc): share of words found in the clean corpus ≥ rate."""
    out = []
    for t in texts:
        words = [w.lower() for w in WORD.findall(t)]
        out.append(bool(words) and sum(w in vocab for w in words) / len(words) >= rate and len(words) >= 3)
    return np.array(out, dtype=bool)


def prompts_file(path: Path, n: int, *, words: int = 4) -> Path:
    from kdata.pools.spec import open_pool

    rows = []
    for u in open_pool("builtin:text-web").units:
        t = u.read()
        rows += [(s, x) for s, x in zip(t.column("sample_id").to_pylist(), t.column("text").to_pylist()) if x]
    rng = np.random.default_rng(0)
    pick = rng.choice(len(rows), size=min(n, len(rows)), replace=False)
    with path.open("w") as f:
        for k in sorted(pick):
            f.write(json.dumps({"id": f"w{k}", "prompt": " ".join(rows[k][1].split()[:words])}) + "\n")
    return path


def run(cmd: list[str]) -> None:
    rc = kdata(cmd)
    if rc != 0:
        raise SystemExit(f"kdata {' '.join(cmd[:2])} failed (exit {rc})")


def subset_pool(table: pa.Table, ids: list[str], path: Path) -> Path:
    keep = set(ids)
    sub = table.filter(pa.array([s in keep for s in table.column("sample_id").to_pylist()]))
    write_parquet(path / "part-00000.parquet", sub.select(["sample_id", "text"]))
    return path


def train_ppl(pool: Path, out: Path, *, seed: int, epochs: int) -> tuple[float, float]:
    from kdata.training.text import TextTrainConfig, train_text

    run(["select", "--pool", str(pool), "--teacher", "builtin:text-teacher", "--student", "builtin:text-student",
         "--method", "random", "--budget", "100%", "--out", str(out), "--device", "cpu", "--quiet"])
    log = train_text(shards=str(out), student="builtin:text-student", eval="builtin:text-test",
                     config=TextTrainConfig(epochs=epochs, seed=seed, device="cpu"), out=str(out) + "-student")
    return log["perplexity_before"], log["perplexity_after"]


def fit_critic(gen: Path, work: Path, *, label_frac: float, rate: float) -> tuple[Path, dict]:
    from kdata.models.builtin_text import corpus

    vocab = {w.lower() for t in corpus("train") for w in WORD.findall(t)}
    rows = read_shards(gen)
    y = judge(rows.column("text").to_pylist(), vocab, rate=rate)
    rng = np.random.default_rng(1)
    labelled = rng.random(rows.num_rows) < label_frac
    with (work / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sample_id", "accept"])
        w.writerows([s, int(a)] for s, a, m in zip(rows.column("sample_id").to_pylist(), y, labelled) if m)
    crit = work / "critic"
    run(["critic", "fit", "--scores-from", str(gen), "--teacher", "builtin:text-teacher", "--student",
         "builtin:text-student", "--labels", str(work / "labels.csv"), "--embedder", "builtin:text-reference",
         "--recall", "0.8", "--out", str(crit), "--device", "cpu"])
    return crit, {"n_labelled": int(labelled.sum()), "judge_accept_rate": float(y.mean()), "labels": y}


def t_interval(x: np.ndarray) -> str:
    """mean ± half-width of a 95% t-interval (``n/a`` with one value)."""
    if len(x) < 2:
        return f"{x.mean():+.2f} (n/a)"
    return f"{x.mean():+.2f} ± {T975.get(len(x) - 1, 1.96) * x.std(ddof=1) / math.sqrt(len(x)):.2f}"


def markdown(r: dict) -> str:
    """The docs block: setup (candidates, critic, seeds, cores, command), per-seed rows, mean ± std, paired Δ."""
    a = r["args"]
    c = np.array([t[2] for t in r["table"]])
    u = np.array([t[3] for t in r["table"]])

    def sd(x: np.ndarray) -> float:
        return float(x.std(ddof=1)) if len(x) > 1 else 0.0

    setup = (f"{a['prompts']} prompts × {a['per_prompt']} continuations (temperature {a['temperature']}) = "
             f"{r['candidates']} candidates; the judge accepts {r['judge_accept_rate']:.0%}; the critic, fitted on "
             f"{r['n_labelled']} judge labels, accepts {r['accepted']} of the {r['scored']} it scored (judge "
             f"precision of those {r['precision']:.0%}). Student: {a['epochs']} epochs per arm, perplexity on "
             f"`builtin:text-test` (lower is better; {r['before']:.2f} before training). Seeds {r['seeds']}. Measured in "
             f"{r['seconds']:.0f} s on {r['cpus']} CPU cores with:")
    header = "| seed | rows per arm | perplexity, critic | perplexity, unfiltered | unfiltered − critic |"
    lines = [setup, "", f"    {r['command']}", "", header,
             "|---|---|---|---|---|"]
    for seed, n, pc, pu in r["table"]:
        lines.append(f"| {seed} | {n} | {pc:.2f} | {pu:.2f} | {pu - pc:+.2f} |")
    lines.append(f"| **mean ± std** | {r['accepted']} | {c.mean():.2f} ± {sd(c):.2f} | "
                 f"{u.mean():.2f} ± {sd(u):.2f} | {t_interval(u - c)} (95% t-interval) |")
    lines += ["", "Positive differences mean the critic-filtered set trains the better student."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few prompts and epochs (a smoke-sized table)")
    p.add_argument("--prompts", type=int, default=240)
    p.add_argument("--per-prompt", type=int, default=4)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--label-frac", type=float, default=0.4)
    p.add_argument("--judge-rate", type=float, default=0.45)
    p.add_argument("--work", default=None, help="keep the intermediate datasets here")
    p.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks/critic_text.md")
    args = p.parse_args(argv)
    if args.quick:
        args.prompts, args.epochs = 60, 2
    t0 = time.perf_counter()
    work = Path(args.work or tempfile.mkdtemp(prefix="kdata-critic-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    gen = work / "gen"
    run(["generate", "--teacher", "builtin:text-teacher", "--prompts", str(prompts_file(work / "p.jsonl", args.prompts)),
         "--per-prompt", str(args.per_prompt), "--temperature", str(args.temperature), "--max-new-tokens", "40",
         "--out", str(gen), "--device", "cpu", "--json"])
    crit, info = fit_critic(gen, work, label_frac=args.label_frac, rate=args.judge_rate)
    applied = work / "applied.parquet"
    run(["critic", "apply", str(crit), "--scores-from", str(gen), "--out", str(applied), "--device", "cpu", "--json"])
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    a = pq.read_table(applied)
    a = a.filter(pc.is_valid(a.column("p_accept")))  # the scored rows (apply also lists the quarantined ones)
    ids = a.column("sample_id").to_pylist()
    acc = a.column("accept").to_numpy(zero_copy_only=False)
    accepted = [s for s, k in zip(ids, acc) if k]
    rows = read_shards(gen)
    judged = dict(zip(rows.column("sample_id").to_pylist(), info["labels"]))
    print(f"# {rows.num_rows} candidates, judge accepts {info['judge_accept_rate']:.2f}; critic fitted on "
          f"{info['n_labelled']} labels accepts {len(accepted)} (judge precision of accepted "
          f"{np.mean([judged[s] for s in accepted]):.2f})", file=sys.stderr)
    table = [("seed", "n", "ppl critic", "ppl unfiltered")]
    for seed in range(args.seeds):
        s0 = time.perf_counter()
        rng = np.random.default_rng(100 + seed)
        rand = list(rng.choice(ids, size=len(accepted), replace=False))
        before, ppl_c = train_ppl(subset_pool(rows, accepted, work / f"c{seed}"), work / f"c{seed}-sel", seed=seed,
                             epochs=args.epochs)
        _, ppl_u = train_ppl(subset_pool(rows, rand, work / f"u{seed}"), work / f"u{seed}-sel", seed=seed,
                             epochs=args.epochs)
        table.append((seed, len(accepted), ppl_c, ppl_u))
        print(f"# seed {seed}: critic {ppl_c:.2f}, unfiltered {ppl_u:.2f} ({time.perf_counter() - s0:.0f} s; "
              f"{s0 - t0:.0f} s before the first seed)", file=sys.stderr, flush=True)
    report = {"command": "python benchmarks/critic_text.py" + "".join(
                  " " + shlex.quote(x) for x in (sys.argv[1:] if argv is None else argv)),
              "seconds": time.perf_counter() - t0, "cpus": os.cpu_count(), "seeds": list(range(args.seeds)),
              "candidates": rows.num_rows, "judge_accept_rate": info["judge_accept_rate"],
              "n_labelled": info["n_labelled"], "accepted": len(accepted), "scored": len(ids), "before": before,
              "precision": float(np.mean([judged[s] for s in accepted])) if accepted else float("nan"),
              "args": vars(args), "table": table[1:]}
    md = markdown(report)
    print(md)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    if not (args.quick or args.no_write):
        runpy.run_path(str(HERE / "doc_tables.py"))["splice"]("critic_text", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
