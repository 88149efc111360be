"""The demo: built-in pool + built-in teacher/student → curated shards, then a student distilled on
them next to one distilled on a random set of the same size, with the teacher's accuracy."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

from kdata.pipeline.config import RunOptions, SelectConfig
from kdata.pipeline.run import run_select


def random_like(cfg: SelectConfig, *, n: int, out: str | Path) -> Path:
    """``kdata select --method random --budget n`` on ``cfg``'s pool and models, written to ``out``
    (the same curation core as every run; scores come from the cache)."""
    rcfg = dataclasses.replace(cfg, method="random", budget=str(n), balance=None, dedup=None, hard=0)
    run_select(rcfg, out=str(out), opts=RunOptions(device="cpu"))
    return Path(out)


def compare_training(cfg: SelectConfig, *, out: str, n_kept: int, eval_spec: str = "builtin:digits-test",
                     epochs: int | None = None) -> dict:
    """Distil the student on OUT's curated shards and on a random set of the same size; add the teacher."""
    import torch

    from kdata.models.spec import load_model
    from kdata.training.evaluate import EvalSet
    from kdata.training.train import TrainConfig, train

    tc = TrainConfig(device="cpu", seed=cfg.seed, eval_every_epoch=False)
    if epochs:
        tc.epochs = epochs
    teacher = load_model(cfg.teacher)
    student = load_model(cfg.student)
    ev = EvalSet(eval_spec, model=student)
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # a 4k-parameter CNN: one thread is fastest
    try:
        before = ev.accuracy(student)
        teacher_acc = EvalSet(eval_spec, model=teacher).accuracy(teacher)
        curated = train(student, out, config=tc, eval_set=ev)["accuracy"]
        tmp = Path(tempfile.mkdtemp(prefix="kdata-demo-random-"))
        try:
            random_like(cfg, n=n_kept, out=tmp)
            rnd = train(load_model(cfg.student), tmp, config=tc, eval_set=ev)["accuracy"]
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        torch.set_num_threads(old)
    return {"eval": eval_spec, "rows": n_kept, "epochs": tc.epochs, "student_before": before,
            "student_curated": curated, "student_random": rnd, "teacher": teacher_acc}


def run_demo(*, out: str, budget: str = "0.3", seed: int = 0, progress=None, train: bool = True) -> dict:
    cfg = SelectConfig(budget=budget, seed=seed)
    report = run_select(cfg, out=out, opts=RunOptions(progress=progress))
    lines = [f"  read it: pandas.read_parquet('{out}/data')   inspect it: kdata inspect {out}"]
    result = {"report": report, **report.to_dict()}
    if train and report.counts["kept"] > 0:
        if progress:
            progress("training")
        acc = compare_training(cfg, out=out, n_kept=report.counts["kept"])
        if progress:
            progress("training", 1, 1)
        result["training"] = acc
        lines += [f"  student accuracy on {acc['eval']} after {acc['epochs']} epochs of distillation on "
                  f"{acc['rows']} rows:",
                  f"    curated {acc['student_curated']:.3f}   random (same size) {acc['student_random']:.3f}   "
                  f"teacher {acc['teacher']:.3f}   student before {acc['student_before']:.3f}",
                  f"  train it yourself: kdata train --shards {out} --eval builtin:digits-test --out {out}-student"]
    result["lines"] = lines
    return result
