"""The text branch of a curation run: Hugging Face models (``hf:PATH``, ``builtin:text-*``) on a text pool.

``prepare_text`` does every check that needs no scoring (a text pool, text models of one kind,
the method chain and balance a causal LM supports, ``--reference`` where MiniPLM needs it) and
says once (a ``kdata.core.warn`` note) when the student or reference tokenises differently (their NLL is then
compared per byte, ``kl_ts`` left null for the student) and when a student or reference sharing
the teacher's tokenizer has fewer positions (every model sharing it is then scored on the first
``max_length`` tokens of that shortest one, ``kdata.scoring.text.text_models``, recorded as the
run's ``scoring.max_length``); ``--token-topk`` is capped at the
teacher's vocabulary (what the shards store and the manifest records);
``score_text`` scores through ``kdata.scoring.text``. Selection, decisions and writing are the
image path's (``kdata.pipeline.curate.finish``).

Default recipe on causal LMs: MiniPLM difference sampling (``miniplm``; the student stands in for
the reference when none is given), the budget spread over domains when the pool has them.
"""

from __future__ import annotations

from kdata.core.errors import KdataError
from kdata.core.warn import warn
from kdata.models.hf import is_text_spec, not_a_model_dir, text_model_path
from kdata.models.spec import load_model, pick_device
from kdata.pipeline.config import RunOptions, SelectConfig, pool_limits
from kdata.pipeline.pool_checks import check_budget_fits, check_unique_pool_ids
from kdata.pools.spec import open_pool
from kdata.pools.text import check_text_units, payload_kind
from kdata.scoring.text import TextScoreConfig, effective_token_topk, score_text_pool, text_models

LM_METHODS = ("miniplm", "ddk", "random", "disagreement", "critic",  # methods that read causal-LM sequence columns
              # (critic: a text critic from `kdata critic fit` on text, kdata.selection.critic_text)
              "kd3", "rad", "coverage", "teacher_confidence", "student_entropy")
# (kd3/rad/coverage/baselines: class columns derived from sequence statistics, kdata.selection.methods.view)
TEXT_DEFAULT_CHAIN = ["miniplm"]


def is_text_run(cfg: SelectConfig) -> bool:
    """A run whose teacher or student is a text model spec."""
    return not cfg.scores and (is_text_spec(cfg.teacher) or is_text_spec(cfg.student))


def check_specs(cfg: SelectConfig) -> None:
    """Teacher, student and reference all text specs (one line naming the odd one)."""
    roles = [(role, getattr(cfg, role)) for role in ("teacher", "student", "reference")]
    for role, spec in roles:  # a missing local model first: it is the likelier mistake than the mix
        if spec and spec.startswith("hf:") and not text_model_path(spec).is_dir():
            raise KdataError(f"--{role} {spec}: {not_a_model_dir(text_model_path(spec))}")
    for role, spec in roles:
        if spec is not None and not is_text_spec(spec):
            raise KdataError(f"--{role} {spec}: a text run needs text models for teacher, student and reference "
                             "(hf:PATH or builtin:text-*)")


def check_text_pool(pool, *, spec: str) -> None:
    kind = payload_kind(pool)
    if kind == "image":
        raise KdataError(f"{spec}: the pool holds images; text models score a `text` column (JSONL, Parquet "
                         "with `text`, a saved Hugging Face dataset or builtin:text-web)")
    check_text_units(pool)  # a JSONL file with no 'text' on any line: one line before any model loads


def check_image_pool(pool, *, spec: str) -> None:
    """An image model given a text pool: one line before any work."""
    if payload_kind(pool) == "text":
        raise KdataError(f"{spec}: the pool holds text; image models cannot score it (give text models: "
                         "--teacher hf:PATH --student hf:PATH, or precomputed predictions with --scores)")


def _lm_methods(cfg: SelectConfig, methods: list[str], *, has_reference: bool) -> list[str]:
    if cfg.is_default_recipe:
        return list(TEXT_DEFAULT_CHAIN)
    odd = [m for m in methods if m not in LM_METHODS]
    if odd:
        raise KdataError(f"--method {odd[0]}: needs class probabilities, which causal LMs do not give; "
                         f"on causal-LM text use {', '.join(LM_METHODS)}")
    if "miniplm" in methods and not has_reference:
        raise KdataError("--method miniplm on causal LMs needs a reference model: --reference hf:PATH "
                         "(MiniPLM scores loss_reference − loss_teacher)")
    return methods


def _lm_balance(cfg: SelectConfig, balance: str | None, pool) -> str | None:
    if cfg.balance in ("class", "cluster"):
        raise KdataError(f"--balance {cfg.balance}: causal LMs give no classes or embeddings; use domain or none")
    if balance == "class" or (cfg.balance is None and cfg.is_default_recipe):
        return "domain" if _has_domains(pool) else None  # the default recipe: spread over domains
    return balance


def _has_domains(pool) -> bool:
    """Whether some row has a ``domain``: each unit's domain column alone (Parquet reads no text),
    stopping at the first unit with one."""
    for unit in pool.units:
        dom = unit.read_column("domain")
        if dom is not None and dom.null_count < len(dom):
            return True
    return False


def tokenizer_note(models) -> str | None:
    """The note (``kdata.core.warn``) of a causal-LM run whose student or reference tokenises unlike the teacher."""
    other = [f"{role} {m.spec}" for role, m, same in (("student", models.student, models.shared),
                                                      ("reference", models.reference, models.ref_shared))
             if m is not None and not same]
    if not other:
        return None
    names = [f"teacher {models.teacher.spec}", *other]
    whose = f"the {other[0].split()[0]}'s" if len(other) == 1 else "their"
    return (f"{', '.join(names[:-1])} and {names[-1]} tokenise differently; {whose} NLL is compared "
            "per UTF-8 byte of the text (in teacher-token units)" + ("; kl_ts is left null" if not models.shared else ""))


def length_note(models) -> str | None:
    """The note (``kdata.core.warn``) of a run whose shared-tokenizer models are truncated below the teacher's limit."""
    if models.length_limited_by is None:
        return None
    role, spec, own = models.length_limited_by
    same = [f"teacher {models.teacher.spec}", *(f"{r} {m.spec}" for r, m, s in (
        ("student", models.student, models.shared), ("reference", models.reference, models.ref_shared)) if s)]
    n = models.max_length
    return (f"{role} {spec} takes at most {n} tokens (teacher: {own}); {', '.join(same[:-1])} and "
            f"{same[-1]} share a tokenizer and score the same ids, so each text is truncated to {n} tokens "
            "(scoring.max_length)")


def prepare_text(cfg: SelectConfig, *, opts: RunOptions, methods: list[str], balance: str | None, prepared,
                 load=load_model):
    """The ``Prepared`` of a text run (``prepared`` is the pipeline's ``Prepared`` class; ``load`` as
    ``load_model``: the curate flow passes its per-process model cache)."""
    check_specs(cfg)
    if cfg.hard:
        raise KdataError("--hard: HARD augments images; text runs cannot use it")
    pool = open_pool(cfg.pool, limits=pool_limits(cfg))
    if not pool.units:
        raise KdataError(f"{cfg.pool}: the pool is empty")
    check_text_pool(pool, spec=cfg.pool)
    check_budget_fits(cfg.budget, check_unique_pool_ids(pool), where=cfg.pool)  # before any model loads
    device = pick_device(opts.device)
    kw = {"device": device, "precision": cfg.precision, "trust_remote_code": bool(opts.trust_remote_code),
          "max_length": cfg.max_length}
    teacher, student = load(cfg.teacher, **kw), load(cfg.student, **kw)
    reference = load(cfg.reference, **kw) if cfg.reference else None
    models = text_models(teacher, student, reference)
    note = length_note(models)
    if note:
        warn(note, note=True)
    if teacher.kind == "causal_lm":
        if cfg.temperature != 1.0:  # the manifest's temperature says how to read the soft labels: it would lie
            raise KdataError(f"--temperature {cfg.temperature:g}: a causal-LM teacher's per-token soft labels are "
                             "stored at temperature 1 and distilled at it (kdata train --temperature is for text-classifier "
                             "and image students); leave --temperature at 1")
        methods = _lm_methods(cfg, methods, has_reference=reference is not None)
        balance = _lm_balance(cfg, balance, pool)
        note = tokenizer_note(models)
        if note:
            warn(note, note=True)
        if not models.shared:
            warn(f"student {student.spec} does not share teacher {teacher.spec}'s tokenizer: the shards' token-level "
                 "soft labels are in the teacher's vocabulary, so kdata train refuses this student on them; "
                 "distil a student that shares the teacher's tokenizer")
    else:
        pool.check_labels(teacher.class_names)
    token_topk = effective_token_topk(cfg.token_topk, teacher) if teacher.kind == "causal_lm" else cfg.token_topk
    score_cfg = TextScoreConfig(batch_size=opts.batch_size, token_topk=token_topk, topk=cfg.topk,
                                temperature=cfg.temperature, max_text_chars=cfg.max_text_chars)
    return prepared(cfg=cfg, pool=pool, teacher=teacher, student=student, methods=methods, balance=balance,
                    score_cfg=score_cfg, device=device, extra={"text_models": models})


def score_text(prep, *, opts: RunOptions):
    """Score a prepared text run: (scores, quarantined, info) for ``kdata.pipeline.curate.Scored``."""
    return score_text_pool(prep.pool, prep.extra["text_models"], config=prep.score_cfg, device=prep.device,
                           cache=opts.cache, progress=opts.progress)
