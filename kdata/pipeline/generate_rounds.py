"""I2D2 rounds (Bhagavatula et al., arXiv 2212.09246): generate → critic filter → train the student → the
student generates the next round.

Round 1 samples from the teacher; every later round from the student trained in the round before.
Each round is a dataset version of its own under OUT:

* ``round-N/``          the candidates dataset (``kdata generate``: critic-filtered, with its card);
* ``round-N-curated/``  the accepted candidates scored by the teacher (``kdata select --method random
  --budget 100%``: every accepted row, with the teacher's per-token soft labels for distillation);
* ``round-N-student/``  the student distilled on it (``kdata.training.text.train_text``), the next
  round's generator.

The critic's features always come from the models it was fitted with, whoever generates: the real
teacher (``critic_teacher``) and the critic's fitted student (``critic_student``: ``--student`` when it
is that one), never the student a round trained.

``OUT/rounds.json`` records the run's settings (models by checksum, prompts, decoding, critic, training;
not ``--rounds`` nor ``--eval``) and each finished dataset step's config hash. A rerun holds OUT's lock
for the whole run and, before any work, refuses settings that differ from the recorded ones ("holds a
different run"): a finished round is never overwritten. With the same settings every finished step is
reused (found through ``rounds.json``, so a moved or copied OUT reruns too), and a student whose eval
set changed is measured again on the new one, not retrained.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path

from kdata.core.atomic import write_json
from kdata.core.errors import KdataError, printable
from kdata.core.jsonable import differences
from kdata.core.lock import exclusive
from kdata.core.warn import warn
from kdata.dataset.manifest import MANIFEST
from kdata.pipeline.config import RunOptions, SelectConfig
from kdata.pipeline.generate import GenerateConfig, prompts_checksum, read_prompts
from kdata.pipeline.generate_run import critic_student, run_generate, same_spec, spec_checksum, target_critic
from kdata.pipeline.output import already_complete
from kdata.pipeline.run import run_select
from kdata.training.config import TextTrainConfig, with_text_lr

ROUNDS_FILE = "rounds.json"
ROUNDS_VERSION = 2  # 2: the critic's student features from its fitted student in every round


def round_dirs(out: str | Path, r: int) -> tuple[Path, Path, Path]:
    out = Path(out)
    return out / f"round-{r}", out / f"round-{r}-curated", out / f"round-{r}-student"


def eval_fingerprint(spec: str | None) -> str | None:
    """``sha256:`` of an eval set's texts (what its perplexity is measured on); None without one."""
    if spec is None:
        return None
    from kdata.training.text_data import eval_texts

    return "sha256:" + hashlib.sha256(json.dumps(eval_texts(spec)[0]).encode()).hexdigest()


def held_out_perplexity(spec: str, eval_spec: str, cfg) -> tuple[float, int]:
    """(perplexity, texts) of the causal LM ``spec`` on ``eval_spec``, measured as ``train_text`` measures it."""
    from kdata.core.threads import one_thread
    from kdata.models.base import pick_device
    from kdata.models.hf import load_text_model
    from kdata.training.text_data import eval_texts
    from kdata.models.text_tokens import encode_texts
    from kdata.training.text_losses import perplexity

    dev = pick_device(cfg.device)
    model = load_text_model(spec, device=dev, precision="fp32")
    texts, _ = eval_texts(eval_spec)
    seqs = encode_texts(model.tokenizer, texts, max_length=min(cfg.max_length, model.max_length))
    with one_thread() if dev.type == "cpu" else nullcontext():
        return perplexity(model.model, seqs, pad_id=model.pad_id), len(texts)


def _training(cfg) -> dict:
    """A training config as compared between runs (``max_length`` is capped by the student, ``device``
    does not make another student)."""
    return {k: v for k, v in (cfg if isinstance(cfg, dict) else asdict(cfg)).items()
            if k not in ("max_length", "device")}


def student_difference(log: dict, *, student: str, cfg, curated: Path) -> str | None:
    """How a finished student's ``train_log.json`` differs from this training (None: the same)."""
    ck = log.get("student_checksum")
    if (ck != spec_checksum(student)) if ck else not same_spec(log.get("student"), student):
        return f"trained from {printable(log.get('student'))}, this run from {printable(student)}"
    old, new = _training(log.get("config") or {}), _training(cfg)
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            return f"trained with {k} {old.get(k)}, this run {new.get(k)}"
    if log.get("dataset_hash") != _dataset_hash(curated):
        return f"trained on another {curated.name}"
    return None


def remeasure(log: dict, out: Path, *, student: str, cfg, eval_spec: str | None, fingerprint: str | None) -> dict:
    """A finished student's log measured on another eval set (before: ``student``; after: the trained
    weights in ``out``), written back to ``train_log.json``; the weights are not touched."""
    before = after = None
    n = 0
    if eval_spec is not None:
        before, n = held_out_perplexity(student, eval_spec, cfg)
        after, _ = held_out_perplexity(f"hf:{out}", eval_spec, cfg)
    log = {**log, "eval": eval_spec, "n_eval": n, "eval_fingerprint": fingerprint, "metric": "perplexity",
           "perplexity_before": before, "perplexity_after": after, "perplexity": after, "perplexity_last": after,
           "remeasured": True}
    log.pop("worse_than_before", None)
    if before is not None:
        log["worse_than_before"] = after > before
    write_json(out / "train_log.json", log)
    return log


def distill(curated: Path, *, student: str, out: Path, device: str, train_config=None, eval_spec=None) -> dict:
    """Train ``student`` on a curated text dataset into ``out`` under ``out``'s lock. A finished student
    (its ``train_log.json``) is reused when it was trained the same way from the same student on the same
    data (measured again when the eval set changed), and refused in one line otherwise: never retrained
    over. ``eval_spec``: None = the default eval set, ``""`` = none."""
    from kdata.training.text import DEFAULT_EVAL, train_text

    cfg = replace(with_text_lr(train_config or TextTrainConfig(), student), device=device)
    ev = DEFAULT_EVAL if eval_spec is None else (eval_spec or None)
    out = Path(out)
    log_path = out / "train_log.json"
    with exclusive(out):
        fingerprint = eval_fingerprint(ev)
        if log_path.is_file():
            log = json.loads(log_path.read_text())
            why = student_difference(log, student=student, cfg=cfg, curated=Path(curated))
            if why is not None:
                raise KdataError(f"{out}: holds a different run (a student {why}); choose another --out or "
                                 f"delete {out}")
            if log.get("eval_fingerprint") != fingerprint or (fingerprint is None and log.get("eval")):
                log = remeasure(log, out, student=student, cfg=cfg, eval_spec=ev, fingerprint=fingerprint)
            return log
        checksum = spec_checksum(student)
        log = train_text(shards=str(curated), student=student, out=out, config=cfg, eval=ev)
        log.update(dataset_hash=_dataset_hash(curated), student_checksum=checksum, eval_fingerprint=fingerprint)
        write_json(log_path, {k: v for k, v in log.items() if k != "files"})
        return log


def _dataset_hash(curated: Path) -> str | None:
    """The curated dataset's identity: its manifest's config hash and shard checksums."""
    try:
        m = json.loads((Path(curated) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return json.dumps([m.get("config_hash"), [f.get("sha256") for f in m.get("files", [])]])


def rounds_settings(cfg: GenerateConfig, *, student: str, crit_student: str, crit, train_config, device) -> dict:
    """What every round's output depends on, path-free (models by checksum): compared on a rerun."""
    from kdata.models.base import pick_device
    from kdata.selection.critic_checks import critic_digest

    return {"version": ROUNDS_VERSION, "teacher": spec_checksum(cfg.teacher), "student": spec_checksum(student),
            "critic_student": spec_checksum(crit_student), "critic": critic_digest(cfg.critic),
            "critic_threshold": crit.threshold, "prompts": prompts_checksum(read_prompts(cfg.prompts)),
            "per_prompt": cfg.per_prompt, "decoding": cfg.decode.to_dict(), "shard_size": cfg.shard_size,
            "precision": cfg.precision, "device": pick_device(device).type,
            "train": _training(train_config or TextTrainConfig())}


def _first_difference(old: dict, new: dict) -> str | None:
    for k, a, b in differences(old, new)[:1]:
        return f"{k} {printable(a)[:24]} there, {printable(b)[:24]} now"
    return None


def open_rounds(out: Path, settings: dict) -> dict:
    """OUT's ``rounds.json`` record for this run, checked before any work (call under OUT's lock):
    new, or the recorded one when its settings are this run's; otherwise one line."""
    if out.exists() and not out.is_dir():
        raise KdataError(f"{out}: --out exists and is not a directory")
    path = out / ROUNDS_FILE
    if path.is_file():
        try:
            record = json.loads(path.read_text())
        except ValueError:
            raise KdataError(f"{path}: not JSON; delete {out} and rerun") from None
        diff = _first_difference(record.get("settings") or {}, settings)
        if diff is not None:
            raise KdataError(f"{out}: holds a different run ({ROUNDS_FILE}: {diff}); a rerun never overwrites a "
                             "finished round — give another --out, or delete it")
        return record
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if any(n.startswith("round-") for n in held):
        raise KdataError(f"{out}: holds a different run (round directories without {ROUNDS_FILE}: written by an "
                         "older kdata, whose rounds ≥ 2 fed the critic the trained student's statistics); give "
                         "another --out, or delete it")
    if held:
        raise KdataError(f"{out}: --out is not empty and holds no {ROUNDS_FILE} (e.g. {printable(held[0])}); "
                         "--rounds writes its rounds into a directory of their own")
    out.mkdir(parents=True, exist_ok=True)
    record = {"settings": settings, "steps": {}}
    write_json(path, record)
    return record


def _step(out: Path, record: dict, name: str, run):
    """A dataset step: reused when ``rounds.json`` records it finished (by config hash), else ``run()``
    and recorded."""
    h = record["steps"].get(name)
    done = already_complete(out / name, h) if h else None
    if done is not None:
        return done
    report = run()
    record["steps"][name] = json.loads((out / name / MANIFEST).read_text())["config_hash"]
    write_json(out / ROUNDS_FILE, record)
    return report


def run_rounds(cfg: GenerateConfig, *, out: str | Path, rounds: int, student: str, device: str = "auto",
               batch_size: int = 16, train_config=None, eval_spec: str | None = None,
               test_spec: str | None = None, progress=None) -> dict:
    """Run ``rounds`` I2D2 rounds into ``out`` (module doc); returns a summary per round. ``eval_spec``
    chooses the best round (a validation set); ``test_spec``, texts that chose nothing, gives the
    chosen, last and starting students' perplexities without the bias of that choice (``unbiased_perplexities``)."""
    if rounds < 1:
        raise KdataError(f"--rounds {rounds}: must be ≥ 1")
    check_test_set(test_spec, eval_spec)
    if not cfg.critic:
        raise KdataError("--rounds needs --critic: each round keeps what the critic accepts")
    crit = target_critic(cfg)
    scorer = critic_student(crit, student)
    train_config = with_text_lr(train_config or TextTrainConfig(), student)  # one lr for every round's student
    settings = rounds_settings(cfg, student=student, crit_student=scorer, crit=crit, train_config=train_config,
                               device=device)
    out = Path(out)
    with exclusive(out):  # the whole run, training included: one writer of OUT at a time
        record = open_rounds(out, settings)
        generator, current, summary, stopped = cfg.teacher, student, [], None
        for r in range(1, rounds + 1):
            entry, stopped = _one_round(r, cfg, out=out, record=record, generator=generator, current=current,
                                        scorer=scorer, device=device, batch_size=batch_size,
                                        train_config=train_config, eval_spec=eval_spec, progress=progress)
            if stopped is not None:  # self-training drifted: choose among the rounds that ran
                warn(f"{stopped['why']}; stopped after round {r - 1}")
                break
            summary.append(entry)
            current = generator = f"hf:{entry['student']}"
    best = best_round(summary)
    result = {"out": str(out), "rounds": summary, "student": best["student"] if best else current,
              "last_student": current, "best": best, **({"stopped": stopped} if stopped else {})}
    if test_spec:
        tcfg = replace(train_config or TextTrainConfig(), device=device)
        result["test"] = unbiased_perplexities(test_spec, start=student, best=best, last=current, cfg=tcfg)
    return result


def _one_round(r: int, cfg: GenerateConfig, *, out: Path, record: dict, generator: str, current: str, scorer,
               device: str, batch_size: int, train_config, eval_spec,
               progress=None) -> tuple[dict | None, dict | None]:
    """Round ``r``: generate with ``generator``, keep what the critic accepts, train ``current`` on it.
    Returns (the round's summary, None), or (None, why it stopped) when a later round's candidates were
    all rejected (round 1's are one line: there is nothing to train on at all)."""
    gen_dir, cur_dir, stu_dir = round_dirs(out, r)
    rcfg = replace(cfg, teacher=generator, student=scorer, critic_teacher=cfg.teacher,
                   decode=replace(cfg.decode, seed=cfg.decode.seed + r - 1))
    gen = _step(out, record, gen_dir.name,
                lambda: run_generate(rcfg, out=gen_dir, device=device, batch_size=batch_size, progress=progress))
    if not gen.counts["kept"]:
        if r == 1:
            raise KdataError(f"{gen_dir}: the critic accepted no candidate in round 1; lower its cut "
                             "(--critic-recall) or generate more (--per-prompt), into another --out")
        return None, {"round": r, "candidates": str(gen_dir), "counts": gen.counts,
                      "why": f"the critic accepted none of round {r}'s candidates (written by {generator})"}
    scfg = SelectConfig(pool=str(gen_dir), teacher=cfg.teacher, student=current, method="random",
                        budget="100%", seed=cfg.decode.seed, precision=cfg.precision)
    sel = _step(out, record, cur_dir.name, lambda: run_select(scfg, out=str(cur_dir), opts=RunOptions(device=device)))
    log = distill(cur_dir, student=current, out=stu_dir, device=device, train_config=train_config,
                  eval_spec=eval_spec)
    return {"round": r, "generator": generator, "student_in": current, "critic_student": scorer,
            "candidates": str(gen_dir), "curated": str(cur_dir), "student": str(stu_dir),
            "counts": gen.counts, "curated_rows": sel.counts["kept"], "eval": log.get("eval"),
            "perplexity_before": log.get("perplexity_before"), "perplexity_after": log.get("perplexity_after")}, None


def check_test_set(test_spec: str | None, eval_spec: str | None) -> None:
    """A test set must not be the eval set that chooses the round (its figure would carry the choice's
    bias): refused in one line, before any work."""
    from kdata.training.text import DEFAULT_EVAL

    if not test_spec:
        return
    ev = DEFAULT_EVAL if eval_spec is None else (eval_spec or None)
    if ev is not None and eval_fingerprint(test_spec) == eval_fingerprint(ev):
        raise KdataError(f"--test {test_spec}: holds the same texts as the eval set ({ev}) that chooses the best "
                         "round; give texts the rounds never saw")


def unbiased_perplexities(test_spec: str, *, start: str, best: dict | None, last: str, cfg) -> dict:
    """Perplexities on ``test_spec`` of the starting, the last and the chosen student (each measured once)."""
    roles = {"start": start, "last": last, **({"best": best["student"]} if best else {})}
    measured: dict[str, float] = {}
    n = 0
    for spec in dict.fromkeys(roles.values()):
        measured[spec], n = held_out_perplexity(spec, test_spec, cfg)
    return {"spec": test_spec, "n": n, "fingerprint": eval_fingerprint(test_spec),
            **{f"perplexity_{role}": measured[spec] for role, spec in roles.items()}}


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
    return {"round": rnd, "student": student, "perplexity": ppl, "chosen_on": summary[0].get("eval"),
            "worse_rounds": [r["round"] for r in scored if r["perplexity_after"] > r["perplexity_before"]],
            "message": message}
