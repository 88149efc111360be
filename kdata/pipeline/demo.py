"""The demo: built-in pool + built-in teacher/student → curated shards, then a student distilled on
them next to one distilled on a random set of the same size, with the teacher's accuracy.

Sized for a first contact: from an empty cache it runs in about 15 s of CPU on 2 cores (the
built-in weights ship with the package, so nothing but the two demo students trains), and every
step that can take more than a second or two reports progress.

``DEMO_EPOCHS``: both students train for 12 epochs, the trainer's default. Measured on the
default run (437 kept rows, seeds 0–2, test accuracy curated / random): 4 epochs 0.836 / 0.809,
6 epochs 0.854 / 0.861, 12 epochs 0.882 / 0.873. Below 12 the comparison is noise (random
wins at 6) and the students have not converged; 12 epochs cost ~2.5 s of CPU per student.
"""

from __future__ import annotations

import dataclasses
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kdata.core.threads import one_thread
from kdata.pipeline.config import RunOptions, SelectConfig, validate
from kdata.pipeline.run import run_select
from kdata.training.config import TrainConfig

DEMO_EPOCHS = TrainConfig.epochs
EVAL_SPEC = "builtin:digits-test"


def random_like(cfg: SelectConfig, *, n: int, out: str | Path) -> Path:
    """``kdata select --method random --budget n`` on ``cfg``'s pool and models, written to ``out``
    (the same curation core as every run; scores come from the cache)."""
    rcfg = dataclasses.replace(cfg, method="random", budget=str(n), balance=None, dedup=None, hard=0)
    run_select(rcfg, out=str(out), opts=RunOptions(device="cpu"))
    return Path(out)


def student_progress(progress, label: str, *, epochs: int, lock: threading.Lock | None = None):
    """The trainer's per-epoch progress (``epoch E/N``, rows done of rows) as one bar named ``label``;
    calls are serialised on ``lock`` when several trainings report at once."""
    if progress is None:
        return None
    lock = lock or threading.Lock()

    def report(stage: str, done: int | None = None, total: int | None = None) -> None:
        if stage.startswith("epoch ") and total:
            epoch = int(stage.split()[1].split("/")[0]) - 1
            with lock:
                progress(label, epoch * total + (done or 0), epochs * total)

    return report


def _step(progress, stage: str) -> None:
    """Show ``stage`` as a pulsing line until the next stage starts (or it is marked done)."""
    if progress:
        progress(stage)


def _done(progress, stage: str) -> None:
    if progress:
        progress(stage, 1, 1)


def compare_training(cfg: SelectConfig, *, out: str, n_kept: int, eval_spec: str = EVAL_SPEC,
                     epochs: int = DEMO_EPOCHS, progress=None) -> dict:
    """Distil the student on OUT's curated shards and on a random set of the same size; add the teacher.

    Both students start from the same built-in weights and train with the same seed and epochs, and
    are measured after their last epoch (no pick of the best epoch on the test set). It runs under
    ``one_thread()``: the two trainings then share the cores instead of fighting over them.
    """
    from kdata.models.spec import load_model
    from kdata.training.evaluate import EvalSet
    from kdata.training.train import train

    tc = TrainConfig(device="cpu", seed=cfg.seed, eval_every_epoch=False, epochs=epochs)
    with one_thread(), tempfile.TemporaryDirectory(prefix="kdata-demo-random-") as tmp:
        _step(progress, "evaluating")
        teacher, student = load_model(cfg.teacher), load_model(cfg.student)
        ev = EvalSet(eval_spec, model=student)
        before = ev.accuracy(student)
        teacher_acc = EvalSet(eval_spec, model=teacher).accuracy(teacher)
        _done(progress, "evaluating")
        _step(progress, "random set")
        random_set = random_like(cfg, n=n_kept, out=Path(tmp) / "random")
        _done(progress, "random set")
        # the two students train at once, one thread each: their ops are too small to split over
        # cores, and each run has its own seeded generator and model, so the results are those of
        # two runs one after the other (tests/pipeline/test_demo.py compares them)
        lock = threading.Lock()
        jobs = {"curated": (student, out), "random": (load_model(cfg.student), random_set)}
        for k in jobs:  # both bars from the start (each set has n_kept rows)
            if progress:
                progress(f"{k} student", 0, epochs * n_kept)
        with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="kdata-demo") as pool:
            futures = {k: pool.submit(train, m, path, config=tc, eval_set=ev,
                                      progress=student_progress(progress, f"{k} student", epochs=epochs, lock=lock))
                       for k, (m, path) in jobs.items()}
            curated, rnd = (futures[k].result()["accuracy"] for k in ("curated", "random"))
    return {"eval": eval_spec, "rows": n_kept, "epochs": epochs, "student_before": before,
            "student_curated": curated, "student_random": rnd, "teacher": teacher_acc}


def run_demo(*, out: str, budget: str = "0.3", seed: int = 0, epochs: int = DEMO_EPOCHS, progress=None,
             train: bool = True) -> dict:
    """Curate the built-in pool into ``out`` and, with ``train``, compare curated vs random students.

    ``progress(stage, done=None, total=None)`` is told every step: preparing (pool and models),
    scoring, selecting, writing, evaluating, random set, curated student, random student.
    """
    t0 = time.perf_counter()
    cfg = SelectConfig(budget=budget, seed=seed)
    validate(cfg)  # a bad --budget is one line before any progress or work
    _step(progress, "preparing")  # the first line at once: the pool is built on first use (~1 s)
    with one_thread():  # on the CPU everywhere: the demo's numbers are the same on every machine
        report = run_select(cfg, out=out, opts=RunOptions(device="cpu", progress=progress))
        acc = (compare_training(cfg, out=out, n_kept=report.counts["kept"], epochs=epochs, progress=progress)
               if train and report.counts["kept"] > 0 else None)
    lines = [f"  read it: pandas.read_parquet('{out}/data')   inspect it: kdata inspect {out}"]
    result = {"report": report, **report.to_dict()}
    if acc is not None:
        result["training"] = acc
        lines += [(f"  student accuracy on {acc['eval']} after {acc['epochs']} epochs of distillation on "
                   f"{acc['rows']} rows:"),
                  (f"    curated {acc['student_curated']:.3f}   random (same size) {acc['student_random']:.3f}   "
                   f"teacher {acc['teacher']:.3f}   student before {acc['student_before']:.3f}"),
                  f"  train it yourself (the last epoch's weights, as above): kdata train {out} --eval {EVAL_SPEC} "
                  f"--keep-last{'' if epochs == DEMO_EPOCHS else f' --epochs {epochs}'}"]
    result["demo_seconds"] = time.perf_counter() - t0  # ``seconds`` is the curation run's own time
    lines.append(f"  demo done in {result['demo_seconds']:.1f}s")
    result["lines"] = lines
    return result
