"""``kdata generate`` end to end: prompts → candidate shards (resumable) → critic → candidates dataset.

The stage functions live in ``kdata.pipeline.generate`` (prompts, shards) and
``kdata.pipeline.generate_output`` (accounting, writing); the ``generate`` flow calls the same ones
with one Prefect task per prompt shard. ``run_generate`` holds OUT's lock for the whole run.

The critic's features are the teacher's and the student's statistics of each candidate, so they must
come from the models the critic was fitted with (``check_critic_models``, before any generation): a
critic that records their checksums (``kdata critic fit``) refuses other weights in one line; an older
critic is matched by its recorded specs, with one note. A failed run that finished no shard removes
its work directory.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from kdata.core.errors import KdataError, printable
from kdata.core.jsonable import config_hash
from kdata.core.lock import exclusive
from kdata.core.warn import warn
from kdata.models.base import pick_device
from kdata.models.hf import load_text_model
from kdata.pipeline.generate import (
    GenerateConfig,
    check_config,
    generate_shard,
    prompt_shards,
    prompts_checksum,
    read_candidates,
    read_prompts,
    shard_done,
    shard_key,
    work_dir,
)
from kdata.pipeline.generate_output import critic_scores, finish_generate, load_text_critic
from kdata.pipeline.output import RunReport, already_complete


def load_generator(spec: str, *, device, precision: str = "auto", role: str = "teacher"):
    """A causal LM for generation or scoring (one line when it is not one)."""
    model = load_text_model(spec, device=device, precision=precision)
    if model.kind != "causal_lm":
        raise KdataError(f"--{role} {spec}: a {model.kind.replace('_', ' ')}; generation needs a causal LM "
                         "(…ForCausalLM)")
    return model


def target_critic(cfg: GenerateConfig):
    """The fitted critic at ``cfg.critic`` cut at the run's recall or precision target (None without one)."""
    return load_text_critic(cfg.critic, recall=cfg.critic_recall, precision=cfg.critic_precision) \
        if cfg.critic else None


def spec_checksum(spec: str) -> str:
    """The checksum ``load_text_model(spec).checksum`` would report, without loading the model."""
    from kdata.models.hf import text_model_path
    from kdata.models.hf_safety import model_checksum

    path = text_model_path(spec)
    if not path.is_dir():
        raise KdataError(f"{printable(spec)}: model directory not found")
    return model_checksum(path)


def same_spec(a: str | None, b: str | None) -> bool:
    """Two model specs name the same model (``hf:`` paths compared resolved)."""
    if a is None or b is None:
        return a == b
    if a.startswith("hf:") and b.startswith("hf:"):
        return Path(a[3:]).expanduser().resolve() == Path(b[3:]).expanduser().resolve()
    return a == b


_NOTED: set[str] = set()


def check_critic_models(path, crit, *, teacher, student) -> None:
    """One line (exit 2) when the models whose statistics feed the critic are not the ones it was fitted
    with: by checksum when ``critic.json`` records them, else by spec (with one note, ``kdata.core.warn``)."""
    from kdata.selection.critic_checks import check_fitted_models, recorded_models

    if recorded_models(crit) is not None:
        return check_fitted_models(path, crit, teacher=teacher, student=student)
    named = [(r, m, crit.text.get(r)) for r, m in (("teacher", teacher), ("student", student)) if crit.text.get(r)]
    for role, model, spec in named:
        if not same_spec(spec, model.spec):
            raise KdataError(f"{path}: the critic was fitted on the statistics of {role} {printable(spec)}, but the "
                             f"{role} in use is {printable(model.spec)}; its cut does not hold for another model — "
                             f"give --{role} {printable(spec)}, or refit the critic")
    if str(path) in _NOTED:  # once per critic in a process (I2D2 checks it every round)
        return
    _NOTED.add(str(path))
    warn(f"{path}: the critic records no model checksums (fitted before kdata recorded them); "
         + (f"the {' and '.join(r for r, _, _ in named)} were matched by spec only" if named else
             "the teacher and student it scores with cannot be checked") + "; refit it to have them checked", note=True)


def critic_student(crit, student: str) -> str:
    """The student whose statistics feed the critic in I2D2 rounds: ``student`` when it is the one the
    critic was fitted with (same checksum, or same spec for an older critic), else the fitted one."""
    from kdata.selection.critic_checks import recorded_models

    rec = (recorded_models(crit) or {}).get("student")
    fitted = rec[0] if rec else crit.text.get("student")
    if not fitted or (spec_checksum(student) == rec[1] if rec else same_spec(fitted, student)):
        return student
    warn(f"the critic's student statistics come from the student it was fitted with, "
         f"{printable(fitted)}; {printable(student)} is the student the rounds train", note=True)
    return fitted


def run_config(cfg: GenerateConfig, prompts: list[dict], teacher, student, *, device, critic) -> dict:
    """What defines the output (hashed): prompts, models by checksum, decoding, critic and its cut
    (``critic``: the run's ``target_critic``, None without one)."""
    crit = None if critic is None else {"name": Path(cfg.critic).name, "threshold": critic.threshold,
                                        "features": len(critic.feature_names), "coef_sum": float(critic.coef.sum())}
    return {"command": "generate", "teacher": cfg.teacher, "teacher_checksum": teacher.checksum,
            "prompts_file": Path(cfg.prompts).name, "prompts_checksum": prompts_checksum(prompts),
            "n_prompts": len(prompts), "per_prompt": cfg.per_prompt, "decoding": cfg.decode.to_dict(),
            "seed": cfg.decode.seed, "shard_size": cfg.shard_size, "precision": teacher.precision,
            "device": device.type, "student": cfg.student if cfg.critic else None,  # no critic: no student used
            "critic_teacher": cfg.critic_teacher, "student_checksum": student.checksum if student else None,
            "critic": crit}


def generate_shards(teacher, prompts: list[dict], *, cfg: GenerateConfig, out, device, batch_size: int = 16,
                    on_shard=None, progress=None) -> tuple[list[Path], int]:
    """Every prompt shard's candidate file (generating those without a done marker); (paths, reused).
    ``progress("generating", done, total)`` after each shard, in prompts."""
    work = work_dir(out)
    work.mkdir(parents=True, exist_ok=True)
    paths, reused, done = [], 0, 0
    if progress is not None:
        progress("generating", 0, len(prompts))
    for i, shard in enumerate(prompt_shards(prompts, cfg.shard_size)):
        key = shard_key(shard, teacher_checksum=teacher.checksum, cfg=cfg, device_type=device.type)
        reused += shard_done(work, i, key) is not None
        paths.append(generate_shard(teacher, shard, index=i, key=key, work=work, cfg=cfg, batch_size=batch_size))
        if on_shard is not None:
            on_shard(i, paths[-1])
        done += len(shard)
        if progress is not None:
            progress("generating", done, len(prompts))
    return paths, reused


def run_generate(cfg: GenerateConfig, *, out: str | Path, device: str = "auto", batch_size: int = 16,
                 on_shard=None, before_commit=None, progress=None) -> RunReport:
    """Generate, filter and write the candidates dataset (module doc). ``on_shard(i, path)`` runs after
    each finished shard (tests use it to stop a run part-way); ``progress("generating", done, total)``
    counts the prompts generated for."""
    check_config(cfg)
    prompts = read_prompts(cfg.prompts)
    dev = pick_device(device)
    critic = target_critic(cfg)  # loaded once, before any model: hashed into the config, then it scores
    with exclusive(out):
        teacher = load_generator(cfg.teacher, device=dev, precision=cfg.precision)
        student = load_generator(cfg.student, device=dev, precision=cfg.precision, role="student") \
            if cfg.critic else None
        scorer = teacher if not cfg.critic or cfg.critic_teacher in (None, cfg.teacher) else \
            load_generator(cfg.critic_teacher, device=dev, precision=cfg.precision)
        if critic is not None:  # the critic's features come from the models it was fitted with, or nothing runs
            check_critic_models(cfg.critic, critic, teacher=scorer, student=student)
        config = run_config(cfg, prompts, teacher, student, device=dev, critic=critic)
        done = already_complete(out, config_hash(config), config=config)
        if done is not None:
            return done
        try:
            paths, reused = generate_shards(teacher, prompts, cfg=cfg, out=out, device=dev, batch_size=batch_size,
                                            on_shard=on_shard, progress=progress)
        except BaseException:
            remove_if_unused(work_dir(out))
            raise
        report = write_candidates(read_candidates(paths), prompts=prompts, cfg=cfg, out=out, teacher=scorer,
                                  student=student, config=config, device=dev, critic=critic,
                                  extra={"shards": {"n": len(paths), "reused": reused}}, before_commit=before_commit)
        shutil.rmtree(work_dir(out), ignore_errors=True)
        return report


def remove_if_unused(work: Path) -> None:
    """Remove a work directory in which no shard finished (a run that failed before its first done marker)."""
    if work.is_dir() and not any(work.glob("*.done.json")):
        shutil.rmtree(work, ignore_errors=True)


def write_candidates(cands, *, prompts, cfg: GenerateConfig, out, teacher, student, config: dict, device,
                     critic=None, extra: dict | None = None, before_commit=None) -> RunReport:
    """Critic (when given; ``critic``: the loaded ``target_critic``) then ``finish_generate``."""
    prob = crit = None
    quarantined: dict = {}
    if cfg.critic:
        nonempty = cands.filter([bool((t or "").strip()) for t in cands.column("text").to_pylist()])
        p, quarantined, crit = critic_scores(nonempty, critic=critic if critic is not None else cfg.critic,
                                             teacher=teacher, student=student, device=device,
                                             recall=cfg.critic_recall, precision=cfg.critic_precision)
        by_id = dict(zip(nonempty.column("sample_id").to_pylist(), p))
        import numpy as np

        prob = np.array([by_id.get(i, np.nan) for i in cands.column("sample_id").to_pylist()], dtype=np.float64)
    models = {"teacher": teacher.describe(), **({"student": student.describe()} if student is not None else {})}
    return finish_generate(cands, prompts=prompts, cfg=cfg, out=out, models=models, config=config, crit=crit,
                           prob=prob, quarantined=quarantined, extra=extra, before_commit=before_commit)
