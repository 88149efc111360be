"""Text trainer learning rate: which AdamW rate distils a causal-LM student best, by how trained it is?

The built-in text student (``builtin:text-student``, 1 layer × 64, pre-trained for 80 steps on 150
paragraphs) is barely trained; a student of a user's own is normally a pre-trained model. This script
distils both kinds on one curated set — the default recipe's 30% of ``builtin:text-web``, written by
``kdata.pipeline.run.run_select`` exactly as ``kdata select`` writes it — with each learning rate, and
measures perplexity on the clean held-out ``builtin:text-test`` (lower is better) before and after
(the last epoch's weights, ``keep_best`` off). The two pre-trained students share the built-in
tokenizer and are trained here on the teacher's corpus (seeded, one thread; cached under
``$KDATA_CACHE/bench-text-lr``): 1 layer × 64 for 600 steps and 2 layers × 128 for 500 steps.

    python benchmarks/text_lr.py --quick     # smoke: 1 seed, lr 1e-2 and 1e-4; writes nothing
    python benchmarks/text_lr.py             # the table: 2 seeds, lr 1e-2, 1e-3, 3e-4, 1e-4

Unless ``--quick`` or ``--no-write``, the table is spliced into ``docs/benchmarks/text_lr.md``
(``benchmarks/doc_tables.py``). The trainer's defaults (``kdata.training.config.text_lr``) are the
rates this table favours for each kind of student.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # benchmarks/select.py shadows select

import argparse  # noqa: E402
import os  # noqa: E402
import runpy  # noqa: E402
import shlex  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(HERE.parent))

PRETRAINED = {"pre-trained 1×64": (1, 64, 600), "pre-trained 2×128": (2, 128, 500)}  # layers, width, steps


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 seed, lr 1e-2 and 1e-4, writes nothing")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 2; --quick 1)")
    p.add_argument("--lrs", default=None, help="comma-separated rates (default 1e-2,1e-3,3e-4,1e-4)")
    p.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks/text_lr.md")
    return p.parse_args(argv)


def pretrained_student(name: str, layers: int, width: int, steps: int) -> Path:
    """A GPT-2 student with the built-in tokenizer, trained ``steps`` steps on the teacher's corpus (cached)."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from kdata.core.paths import cache_dir
    from kdata.core.threads import one_thread
    from kdata.models.builtin_text import BLOCK, corpus, lr_at, tokenizer_dir

    out = cache_dir("bench-text-lr") / name.replace(" ", "-").replace("×", "x")
    if (out / "config.json").is_file():
        return out
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir()))
    ids = [i for enc in tok(corpus("train"))["input_ids"] for i in enc + [tok.eos_token_id]]
    blocks = torch.tensor(ids[:len(ids) // BLOCK * BLOCK]).view(-1, BLOCK)
    torch.manual_seed(7)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=BLOCK, n_embd=width, n_layer=layers, n_head=2,
                                       bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                                       pad_token_id=tok.eos_token_id))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    rng = np.random.default_rng(7)
    with one_thread():
        for step in range(steps):
            batch = blocks[rng.integers(0, len(blocks), 32)]
            for g in opt.param_groups:
                g["lr"] = lr_at(step, steps=steps, lr=3e-3)
            model(input_ids=batch, labels=batch).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent))
    model.eval().save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    os.replace(tmp, out)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    from kdata.pipeline.config import RunOptions
    from kdata.pipeline.demo_text import text_config
    from kdata.pipeline.run import run_select
    from kdata.training.text import TextTrainConfig, train_text

    seeds = list(range(args.seeds or (1 if args.quick else 2)))
    lrs = [float(x) for x in (args.lrs or ("1e-2,1e-4" if args.quick else "1e-2,1e-3,3e-4,1e-4")).split(",")]
    t0 = time.perf_counter()
    students = {"builtin:text-student": "builtin:text-student",
                **{n: f"hf:{pretrained_student(n, *spec)}" for n, spec in PRETRAINED.items()}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run_select(text_config(budget="0.3", seed=0, method="default"), out=str(work / "curated"),
                   opts=RunOptions(device="cpu"))
        rows = {}
        for name, spec in students.items():
            for lr in lrs:
                for seed in seeds:
                    log = train_text(shards=str(work / "curated"), student=spec, eval="builtin:text-test",
                                     config=TextTrainConfig(lr=lr, seed=seed, device="cpu"),
                                     out=work / f"s-{len(rows)}")
                    rows[(name, lr, seed)] = (log["perplexity_before"], log["perplexity_last"])
                    print(f"{name} lr {lr:g} seed {seed}: {log['perplexity_before']:.1f} → {log['perplexity_last']:.1f}",
                          file=sys.stderr, flush=True)
    cmd = "python benchmarks/text_lr.py" + (" " + shlex.join(argv if argv is not None else sys.argv[1:])
                                             if (argv if argv is not None else sys.argv[1:]) else "")
    md = markdown(rows, students=list(students), lrs=lrs, seeds=seeds, seconds=time.perf_counter() - t0, command=cmd)
    print(md)
    if not (args.quick or args.no_write):
        done = runpy.run_path(str(HERE / "doc_tables.py"))["splice"]("text_lr", md)
        print("updated docs/benchmarks/text_lr.md" if done else "docs/benchmarks/text_lr.md has no markers",
              file=sys.stderr)
    return 0


def markdown(rows: dict, *, students: list[str], lrs: list[float], seeds: list[int], seconds: float,
             command: str) -> str:
    """One row per student: perplexity before, then after at each rate (mean ± std over seeds; best in bold)."""
    from kdata.training.config import text_lr

    head = (f"Curated set: the default recipe's 30% of `builtin:text-web` (350 rows); perplexity on "
            f"`builtin:text-test` after 6 epochs (the last epoch's weights), mean ± std over seeds {seeds}. "
            f"Measured in {seconds:.0f} s on {os.cpu_count()} CPU cores with:\n\n    {command}\n")
    lines = ["| student | before | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | default lr |",
             "|---|---:|" + "---:|" * (len(lrs) + 1)]
    for name in students:
        before = rows[(name, lrs[0], seeds[0])][0]
        means = {lr: np.mean([rows[(name, lr, s)][1] for s in seeds]) for lr in lrs}
        best = min(means, key=means.get)
        cells = []
        for lr in lrs:
            after = [rows[(name, lr, s)][1] for s in seeds]
            sd = f" ± {np.std(after, ddof=1):.1f}" if len(after) > 1 else ""
            cell = f"{means[lr]:.1f}{sd}"
            cells.append(f"**{cell}**" if lr == best else cell)
        default = text_lr(None, name if name.startswith("builtin:") else "hf:own")[0]
        lines.append(f"| `{name}` | {before:.1f} | " + " | ".join(cells) + f" | {default:g} |")
    return head + "\n" + "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
