"""The ``generate`` Prefect flow: generate (one cached task per prompt shard) → critic → write → select → distill.

It calls the same stage functions as ``kdata generate`` (``kdata.pipeline.generate``,
``kdata.pipeline.generate_output``), ``kdata select`` (``kdata.pipeline.run.run_select``) and the
text trainer (``kdata.training.text.train_text``). Tasks pass paths, keys and small dicts, never
tables or models; each task loads its models through a per-process cache.

Each prompt shard's task is cached by Prefect on the shard key (its prompts, the teacher's
checksum, the decoding settings, precision, device type, kdata version — ``shard_key``); its
candidates live under ``$KDATA_CACHE/generate`` (like score files), so a rerun — after a crash,
or into a new output with the same prompts and settings — shows those tasks as ``Cached``.

Outputs: ``OUT`` (the candidates dataset with its card), with a student: ``OUT-curated`` (the
accepted candidates with the teacher's per-token soft labels) and ``OUT-student``::

    python flows/generate.py --prompts prompts.jsonl --out runs/generated-v1 \\
        --student builtin:text-student --critic critic/
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task

from kdata.core.errors import KdataError
from kdata.core.warn import shows_lines
from kdata.flows.config import mark_records_used, result_storage
from kdata.flows.model_cache import cached_model
from kdata.flows.run_log import logs_warnings


def _model(spec: str, *, device: str, precision: str = "auto", checksums: dict | None = None):
    """``load_generator`` through the flows' model cache; ``checksums`` (spec → checksum, recorded when
    the flow began) makes a model replaced since then one clear error."""
    from kdata.pipeline.generate_run import load_generator

    return cached_model(spec, device=device, checksum=(checksums or {}).get(spec), load=load_generator,
                        precision=precision)


def _checksums(cfg, *, device: str) -> dict:
    """spec → checksum of every model the tasks load (already in this process's cache by then)."""
    specs = [cfg.teacher, *([cfg.critic_teacher or cfg.teacher, cfg.student] if cfg.critic else [])]
    return {s: _model(s, device=device, precision=cfg.precision).checksum for s in specs}


def _cfg(params: dict):
    from kdata.models.hf_generate import DecodeConfig
    from kdata.pipeline.generate import GenerateConfig

    p = dict(params)
    return GenerateConfig(**{**p, "decode": DecodeConfig(**(p.get("decode") or {}))})


def _store() -> Path:
    from kdata.core.paths import cache_dir

    return cache_dir("generate")


def shard_cache_key(context, parameters: dict) -> str:
    """Prefect cache key of a shard task: the shard key (what its candidates depend on)."""
    return "generate-shard-" + parameters["key"]


@task(name="generate-shard", cache_key_fn=shard_cache_key, persist_result=True, retries=1)
@logs_warnings
def generate_shard_task(params: dict, index: int, key: str, device: str, batch_size: int,
                        shard: list[dict], checksums: dict | None = None) -> dict:
    """Generate one prompt shard (``shard``: its prompts, read once by the flow) into the generate cache;
    returns its path. ``checksums``: spec → checksum the flow began with (``_checksums``)."""
    from kdata.pipeline.generate import generate_shard

    cfg = _cfg(params)
    model = _model(cfg.teacher, device=device, precision=cfg.precision, checksums=checksums)
    path = generate_shard(model, shard, index=index, key=key, work=_store(), cfg=cfg, batch_size=batch_size)
    return {"index": index, "key": key, "path": str(path)}


@task(name="critic")
@logs_warnings
def critic_task(params: dict, paths: list[str], device: str, checksums: dict | None = None) -> dict | None:
    """P(accept) of every non-empty candidate (teacher/student statistics + embedder); None without a critic."""
    import pyarrow as pa

    from kdata.core.atomic import write_parquet
    from kdata.pipeline.generate import read_candidates
    from kdata.pipeline.generate_output import critic_scores

    cfg = _cfg(params)
    if not cfg.critic:
        return None
    cands = read_candidates([Path(p) for p in paths])
    nonempty = cands.filter([bool((t or "").strip()) for t in cands.column("text").to_pylist()])
    teacher = _model(cfg.critic_teacher or cfg.teacher, device=device, precision=cfg.precision,
                     checksums=checksums)  # as run_generate
    prob, quarantined, crit = critic_scores(nonempty, critic=cfg.critic, teacher=teacher,
                                            student=_model(cfg.student, device=device, precision=cfg.precision,
                                                           checksums=checksums),
                                            device=device,
                                            recall=cfg.critic_recall, precision=cfg.critic_precision)
    import hashlib

    key = json.dumps([paths, str(Path(cfg.critic).resolve()), crit.threshold, crit.feature_names[:8]])
    path = _store() / f"critic-{hashlib.sha256(key.encode()).hexdigest()[:32]}.parquet"
    write_parquet(path, pa.table({"sample_id": nonempty.column("sample_id"), "p": pa.array(prob, pa.float64())}))
    return {"path": str(path), "quarantined": quarantined, "threshold": crit.threshold}


@task(name="write")
@logs_warnings
def write_task(params: dict, paths: list[str], critic: dict | None, out: str, device: str,
               checksums: dict | None = None) -> dict:
    """Account for every candidate and write the candidates dataset (``finish_generate``)."""
    import numpy as np

    from kdata.core.atomic import read_parquet
    from kdata.models.base import pick_device
    from kdata.pipeline.generate import read_candidates, read_prompts
    from kdata.pipeline.generate_output import finish_generate
    from kdata.pipeline.generate_run import run_config, target_critic

    cfg = _cfg(params)
    teacher = _model(cfg.teacher, device=device, precision=cfg.precision, checksums=checksums)
    student = _model(cfg.student, device=device, precision=cfg.precision, checksums=checksums) if cfg.critic else None
    prompts = read_prompts(cfg.prompts)
    cands = read_candidates([Path(p) for p in paths])
    prob = None
    if critic is not None:
        t = read_parquet(critic["path"])
        by_id = dict(zip(t.column("sample_id").to_pylist(), t.column("p").to_pylist()))
        prob = np.array([by_id.get(i, np.nan) for i in cands.column("sample_id").to_pylist()], dtype=np.float64)
    crit = target_critic(cfg)  # once: the cut the decisions use and the config hash
    models = {"teacher": teacher.describe(), **({"student": student.describe()} if student is not None else {})}
    report = finish_generate(cands, prompts=prompts, cfg=cfg, out=out, models=models, crit=crit, prob=prob,
                             quarantined=(critic or {}).get("quarantined") or {},
                             config=run_config(cfg, prompts, teacher, student, device=pick_device(device), critic=crit),
                             extra={"shards": {"n": len(paths)}})
    return report.to_dict()


@task(name="select")
@logs_warnings
def select_task(pool: str, teacher: str, student: str, out: str, device: str, select: dict | None = None) -> dict:
    """Score the accepted candidates with the teacher (per-token soft labels): ``kdata select``."""
    from kdata.pipeline.config import RunOptions, SelectConfig
    from kdata.pipeline.run import run_select

    cfg = SelectConfig(**{"method": "random", "budget": "100%", **(select or {}), "pool": pool, "teacher": teacher,
                          "student": student})
    return run_select(cfg, out=out, opts=RunOptions(device=device)).to_dict()


@task(name="distill")
@logs_warnings
def distill_task(curated: str, student: str, out: str, device: str, distill: dict | None = None) -> dict:
    """Train the student on the curated candidates (the text trainer), keeping the weights that score best
    on the eval set as ``kdata train`` does unless ``distill`` sets ``keep_best: false`` (``--keep-last``)."""
    from kdata.pipeline.generate_rounds import distill as train
    from kdata.training.text import TextTrainConfig

    d = {"keep_best": True, **(distill or {})}  # TextTrainConfig's own default (False) is I2D2 rounds'
    ev = d.pop("eval", None)
    log = train(Path(curated), student=student, out=Path(out), device=device,
                train_config=TextTrainConfig(**d), eval_spec=ev)
    keys = ("out", "n_train", "steps", "perplexity_before", "perplexity_after", "perplexity_last", "accuracy_before",
            "accuracy_after", "accuracy_last", "eval")
    return {**{k: log.get(k) for k in keys}, "metric": log.get("metric") or "perplexity"}


@flow(name="generate", log_prints=True)
@logs_warnings
def generate(params: dict, out: str, run: dict | None = None, select: dict | None = None,
             distill: dict | None = None) -> dict:
    """Generate candidates per prompt shard (cached), filter with the critic, write, select, distill.

    ``params``: GenerateConfig fields (teacher, prompts, per_prompt, decode {temperature, top_p,
    max_new_tokens, seed}, shard_size, precision, student, critic, critic_recall); ``run``: device,
    batch_size; ``select``: extra SelectConfig fields; ``distill``: TextTrainConfig fields + eval (``keep_best``
    defaults to True here, as in ``kdata train``).
    """
    from kdata.models.base import pick_device
    from kdata.pipeline.generate import (
        check_config,
        prompt_shards,
        read_prompts,
        shard_key,
    )
    from kdata.pipeline.generate_run import target_critic

    logger = get_run_logger()
    cfg, run = _cfg(params), dict(run or {})
    check_config(cfg)
    check_distill(cfg, distill)
    target_critic(cfg)  # an unreadable or image-score critic: one line before any model or shard
    device = str(pick_device(run.get("device", "auto")))
    teacher = _model(cfg.teacher, device=device, precision=cfg.precision)
    check_critic(cfg, device=device)
    checksums = _checksums(cfg, device=device)
    shards = prompt_shards(read_prompts(cfg.prompts), cfg.shard_size)
    keys = [shard_key(s, teacher_checksum=teacher.checksum, cfg=cfg, device_type=device.split(":")[0])
            for s in shards]
    tasks = generate_shard_task.with_options(result_storage=result_storage())
    batch = int(run.get("batch_size", 16))
    states = [tasks(params, i, k, device, batch, shards[i], checksums, return_state=True) for i, k in enumerate(keys)]
    done = [s.result() for s in states]
    for i, d in enumerate(done):  # a cached result whose file was removed since: generate it again
        if not Path(d["path"]).is_file():
            done[i] = tasks.with_options(refresh_cache=True)(params, i, keys[i], device, batch, shards[i], checksums)
    mark_records_used(shard_cache_key(None, {"key": k}) for k in keys)
    paths = [d["path"] for d in done]
    critic = critic_task(params, paths, device, checksums)
    report = write_task(params, paths, critic, out, device, checksums)
    result = {"out": out, "counts": report["counts"], "status": report["status"],
              "shards": {s.name: sum(1 for x in states if x.name == s.name) for s in states}}
    logger.info("candidates: %s", report["counts"])
    if cfg.student and report["counts"]["kept"]:
        curated, student_out = f"{out}-curated", f"{out}-student"
        result["curated"] = select_task(out, cfg.teacher, cfg.student, curated, device, select)["counts"]
        if distill is not None:
            from kdata.flows.distill import outcome

            trained = distill_task(curated, cfg.student, student_out, device, distill)
            result["student"] = {**trained, **outcome(trained, eval=trained.get("eval"),
                                                      lower_is_better=trained["metric"] == "perplexity")}
            verdict = result["student"]
            (logger.info if verdict["verdict"] == "improved" else logger.warning)("distill %s: %s", student_out,
                                                                                 verdict["message"])
    return result


@shows_lines
def main(argv: list[str] | None = None) -> int:
    """``python flows/generate.py``: the main options of ``kdata generate``, run as the flow."""
    p = argparse.ArgumentParser(prog="flows/generate.py", description="Run the kdata generate flow once.")
    p.add_argument("--prompts", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--teacher", default="builtin:text-teacher")
    p.add_argument("--per-prompt", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--student", default=None)
    p.add_argument("--critic", default=None)
    p.add_argument("--distill", action="store_true", help="train the student on the curated candidates, keeping "
                   "the weights that score best on the eval set (as kdata train)")
    p.add_argument("--keep-last", action="store_true",
                   help="with --distill: keep the last epoch's weights instead (as kdata train --keep-last)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    params = {"teacher": args.teacher, "prompts": args.prompts, "per_prompt": args.per_prompt,
              "student": args.student, "critic": args.critic,
              "decode": {"temperature": args.temperature, "top_p": args.top_p, "max_new_tokens": args.max_new_tokens,
                         "seed": args.seed}}
    try:
        if args.keep_last and not args.distill:
            raise KdataError("--keep-last: a --distill option (which weights of the trained student to save)")
        check_inputs(params, device=args.device, distill=args.distill)
        result = generate(params=params, out=args.out, run={"device": args.device},
                          distill=({"keep_best": not args.keep_last} if args.distill else None))
    except KdataError as exc:
        print(f"generate: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(result, default=str))
    if "student" in result:
        print(f"generate: student {result['student']['out']}: {result['student']['message']}", file=sys.stderr)
    return 0


def check_inputs(params: dict, *, device: str, distill: bool = False) -> None:
    """Every check that needs no generation, before a flow run starts (one line, no Prefect traceback):
    the Prefect API, the options (``check_config``), the critic and its cut, the device, the prompts
    file, the teacher (loaded into this process's model cache, which the flow then reuses) and the
    student's spec."""
    from kdata.flows.inputs import check_api
    from kdata.models.base import pick_device
    from kdata.models.hf import text_model_path
    from kdata.pipeline.generate import check_config, read_prompts
    from kdata.pipeline.generate_run import target_critic

    check_api()
    cfg = _cfg(params)
    check_config(cfg)
    check_distill(cfg, {} if distill else None)
    target_critic(cfg)
    dev = str(pick_device(device))
    read_prompts(cfg.prompts)
    _model(cfg.teacher, device=dev, precision=cfg.precision)
    if cfg.student:
        path = text_model_path(cfg.student)
        if not path.is_dir():
            raise KdataError(f"--student {cfg.student}: model directory not found")
    check_critic(cfg, device=dev)


def check_critic(cfg, *, device: str) -> None:
    """With a critic: the teacher and student whose statistics feed it must be the ones it was fitted
    with (``kdata.pipeline.generate_run.check_critic_models``; one line, before any shard)."""
    from kdata.pipeline.generate_run import check_critic_models, target_critic

    if not cfg.critic:
        return
    check_critic_models(cfg.critic, target_critic(cfg),
                        teacher=_model(cfg.critic_teacher or cfg.teacher, device=device, precision=cfg.precision),
                        student=_model(cfg.student, device=device, precision=cfg.precision))


def check_distill(cfg, distill: dict | None) -> None:
    """Distilling needs a student to train (``--distill`` without ``--student`` is a usage error)."""
    if distill is not None and not cfg.student:
        raise KdataError("--distill trains the student on the curated candidates: give --student "
                         "(hf:PATH or builtin:text-student)")
