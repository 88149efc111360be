"""``kdata demo --text``: the whole text job on the embedded default, nothing downloaded.

``builtin:text-web`` (standard-library docstrings shaped like web text) is curated with the
built-in teacher, student and reference LMs (trained on first use and cached) by the default
recipe into OUT; a random set of the same size is selected through the same curation core; the
built-in student is distilled on each (per-token top-k soft labels + leftover mass, plus CE) and
its perplexity on ``builtin:text-test`` is printed before and after, next to the teacher's.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

from kdata.core.threads import one_thread
from kdata.pipeline.config import RunOptions, SelectConfig, validate
from kdata.pipeline.run import run_select

POOL = "builtin:text-web"
EVAL = "builtin:text-test"
TEACHER, STUDENT, REFERENCE = "builtin:text-teacher", "builtin:text-student", "builtin:text-reference"
DEMO_EPOCHS = 6  # the text trainer's default (kdata.training.text.TextTrainConfig)


def text_config(*, budget: str = "0.3", seed: int = 0, method: str = "default") -> SelectConfig:
    """The demo's selection: the built-in text pool and models, ``method`` at ``budget``."""
    uses_reference = method == "default" or "miniplm" in method.split(",")  # MiniPLM's; refused elsewhere
    return SelectConfig(pool=POOL, teacher=TEACHER, student=STUDENT, reference=REFERENCE if uses_reference else None,
                        method=method, budget=budget, seed=seed)


def teacher_perplexity(*, eval_spec: str = EVAL, spec: str = TEACHER, max_length: int = 512) -> float:
    """The perplexity of a text model on an evaluation set (the mark the students aim at)."""
    from kdata.models.hf import load_text_model
    from kdata.training.text_data import eval_texts
    from kdata.models.text_tokens import encode_texts
    from kdata.training.text_losses import perplexity

    model = load_text_model(spec, device="cpu", precision="fp32")
    texts, _ = eval_texts(eval_spec)
    seqs = encode_texts(model.tokenizer, texts, max_length=min(max_length, model.max_length))
    return perplexity(model.model, seqs, pad_id=model.pad_id)


def train_pair(cfg: SelectConfig, *, out: str, n_kept: int, epochs: int = DEMO_EPOCHS, progress=None) -> dict:
    """The student distilled on OUT's curated shards and on a random set of the same size (same seed,
    same epochs); held-out perplexity before and after each, and the teacher's."""
    from kdata.training.text import TextTrainConfig, train_text

    tc = TextTrainConfig(epochs=epochs, seed=cfg.seed, device="cpu")
    logs = {}
    with tempfile.TemporaryDirectory(prefix="kdata-demo-text-") as tmp:
        rcfg = dataclasses.replace(cfg, method="random", budget=str(n_kept), balance=None, dedup=None, hard=0,
                                   reference=None)  # random reads no reference model: refused beside it
        _tell(progress, "random set")
        run_select(rcfg, out=str(Path(tmp) / "random"), opts=RunOptions(device="cpu"))
        for name, shards in (("curated", out), ("random", str(Path(tmp) / "random"))):
            _tell(progress, f"{name} student")
            logs[name] = train_text(shards=shards, student=cfg.student, eval=EVAL, config=tc,
                                    out=Path(tmp) / f"{name}-student")
    return {"eval": EVAL, "rows": n_kept, "epochs": epochs, "student_before": logs["curated"]["perplexity_before"],
            "student_curated": logs["curated"]["perplexity_after"], "student_random": logs["random"]["perplexity_after"],
            "teacher": teacher_perplexity()}


def _tell(progress, stage: str) -> None:
    if progress:
        progress(stage)


def run_text_demo(*, out: str, budget: str = "0.3", seed: int = 0, epochs: int = DEMO_EPOCHS, progress=None,
                  train: bool = True) -> dict:
    """Curate ``builtin:text-web`` into ``out`` with the default recipe and, with ``train``, compare
    students distilled on the curated and on a random set (``lines`` says it for a person)."""
    t0 = time.perf_counter()
    cfg = text_config(budget=budget, seed=seed)
    validate(cfg)
    _tell(progress, "preparing")  # the built-in LMs train on first use (well under a minute)
    with one_thread():
        report = run_select(cfg, out=out, opts=RunOptions(device="cpu", progress=progress))
        ppl = (train_pair(cfg, out=out, n_kept=report.counts["kept"], epochs=epochs, progress=progress)
               if train and report.counts["kept"] > 0 else None)
    lines = [f"  read it: pandas.read_parquet('{out}/data')   inspect it: kdata inspect {out}"]
    result = {"report": report, **report.to_dict()}
    if ppl is not None:
        result["training"] = ppl
        lines += [(f"  student perplexity on {ppl['eval']} after {ppl['epochs']} epochs of distillation on "
                   f"{ppl['rows']} rows (lower is better):"),
                  (f"    curated {ppl['student_curated']:.1f}   random (same size) {ppl['student_random']:.1f}   "
                   f"teacher {ppl['teacher']:.1f}   student before {ppl['student_before']:.1f}"),
                  f"  train it yourself (the last epoch's weights, as above): kdata train {out} --student {STUDENT} --eval {EVAL} --keep-last"]
    result["demo_seconds"] = time.perf_counter() - t0
    lines.append(f"  demo done in {result['demo_seconds']:.1f}s")
    result["lines"] = lines
    return result
