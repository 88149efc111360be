"""I2D2 rounds (Bhagavatula et al., arXiv 2212.09246): generate → critic filter → train the student → the
student generates the next round.

Round 1 samples from the teacher; every later round from the student trained in the round before.
Each round is a dataset version of its own under OUT:

* ``round-N/``          the candidates dataset (``kdata generate``: critic-filtered, with its card);
* ``round-N-curated/``  the accepted candidates scored by the teacher (``kdata select --method random
  --budget 100%``: every accepted row, with the teacher's per-token soft labels for distillation);
* ``round-N-student/``  the student distilled on it (``kdata.training.text.train_text``), the next
  round's generator and student.

The critic's statistics always come from the real teacher (``critic_teacher``), whoever generates.
Each step is idempotent (a finished dataset is verified and reused; a trained student with its
``train_log.json`` is reused), so a rerun resumes at the first unfinished step.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

from kdata.core.atomic import write_json
from kdata.core.errors import KdataError
from kdata.pipeline.config import RunOptions, SelectConfig
from kdata.pipeline.generate import GenerateConfig
from kdata.pipeline.generate_run import run_generate
from kdata.pipeline.run import run_select


def round_dirs(out: str | Path, r: int) -> tuple[Path, Path, Path]:
    out = Path(out)
    return out / f"round-{r}", out / f"round-{r}-curated", out / f"round-{r}-student"


def distill(curated: Path, *, student: str, out: Path, device: str, train_config=None, eval_spec=None) -> dict:
    """Train ``student`` on a curated text dataset into ``out`` (reused when its log is there)."""
    from kdata.training.text import DEFAULT_EVAL, TextTrainConfig, train_text

    cfg = replace(train_config or TextTrainConfig(), device=device)
    log_path = out / "train_log.json"
    if log_path.is_file():  # a finished student: reused only when it was trained the same way on the same data
        log = json.loads(log_path.read_text())
        same = {k: v for k, v in log.get("config", {}).items() if k != "max_length"} == \
            {k: v for k, v in asdict(cfg).items() if k != "max_length"}  # max_length: capped by the student
        if log.get("student") == student and same and log.get("dataset_hash") == _dataset_hash(curated):
            return log
    log = train_text(shards=str(curated), student=student, out=out, config=cfg,
                     eval=DEFAULT_EVAL if eval_spec is None else (eval_spec or None))
    log["dataset_hash"] = _dataset_hash(curated)
    write_json(log_path, {k: v for k, v in log.items() if k != "files"})
    return log


def _dataset_hash(curated: Path) -> str | None:
    """The curated dataset's identity: its manifest's config hash and shard checksums."""
    try:
        m = json.loads((Path(curated) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return json.dumps([m.get("config_hash"), [f.get("sha256") for f in m.get("files", [])]])


def run_rounds(cfg: GenerateConfig, *, out: str | Path, rounds: int, student: str, device: str = "auto",
               batch_size: int = 16, train_config=None, eval_spec: str | None = None) -> dict:
    """Run ``rounds`` I2D2 rounds into ``out`` (module doc); returns a summary per round."""
    if rounds < 1:
        raise KdataError(f"--rounds {rounds}: must be ≥ 1")
    if not cfg.critic:
        raise KdataError("--rounds needs --critic: each round keeps what the critic accepts")
    Path(out).mkdir(parents=True, exist_ok=True)
    generator, current, summary = cfg.teacher, student, []
    for r in range(1, rounds + 1):
        gen_dir, cur_dir, stu_dir = round_dirs(out, r)
        rcfg = replace(cfg, teacher=generator, student=current, critic_teacher=cfg.teacher,
                       decode=replace(cfg.decode, seed=cfg.decode.seed + r - 1))
        gen = run_generate(rcfg, out=gen_dir, device=device, batch_size=batch_size)
        if not gen.counts["kept"]:
            raise KdataError(f"{gen_dir}: the critic accepted no candidate in round {r}; lower its cut "
                             "(--critic-recall) or generate more (--per-prompt)")
        sel = run_select(SelectConfig(pool=str(gen_dir), teacher=cfg.teacher, student=current, method="random",
                                      budget="100%", seed=cfg.decode.seed, precision=cfg.precision),
                         out=str(cur_dir), opts=RunOptions(device=device))
        log = distill(cur_dir, student=current, out=stu_dir, device=device, train_config=train_config,
                      eval_spec=eval_spec)
        summary.append({"round": r, "generator": generator, "student_in": current, "candidates": str(gen_dir),
                        "curated": str(cur_dir), "student": str(stu_dir), "counts": gen.counts,
                        "curated_rows": sel.counts["kept"], "perplexity_before": log.get("perplexity_before"),
                        "perplexity_after": log.get("perplexity_after")})
        current = generator = f"hf:{stu_dir}"
    return {"out": str(out), "rounds": summary, "student": current, "best": best_round(summary)}


def best_round(summary: list[dict]) -> dict | None:
    """The student with the lowest held-out perplexity, the starting one included (round 0: round 1's
    ``student_in`` at its ``perplexity_before``), with ``worse_rounds`` (the rounds that raised it:
    self-training can drift, the last student is not always the best) and a one-line ``message``;
    None without an eval set."""
    scored = [r for r in summary if r.get("perplexity_after") is not None]
    if not scored:
        return None
    cands = [(r["round"], f"hf:{r['student']}", r["perplexity_after"]) for r in scored]
    first = summary[0]
    if first.get("perplexity_before") is not None and first.get("student_in"):
        cands.insert(0, (0, first["student_in"], first["perplexity_before"]))  # ties: keep the original
    rnd, student, ppl = min(cands, key=lambda c: c[2])
    message = (f"no round's student beat the starting one's held-out perplexity ({ppl:.1f}): keep the original "
               f"student, {student}"
               if rnd == 0 else f"the lowest held-out perplexity ({ppl:.1f}) is round {rnd}'s student, {student}")
    return {"round": rnd, "student": student, "perplexity": ppl,
            "worse_rounds": [r["round"] for r in scored if r["perplexity_after"] > r["perplexity_before"]],
            "message": message}
