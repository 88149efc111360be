"""Distil a text student from curated text shards (``kdata train DIR --student hf:PATH|builtin:text-student``).

Causal-LM shards (``teacher_topk_ids``): α · KL over the stored top-k plus the leftover bucket +
(1 − α) · CE on the text (``kdata.training.text_losses``); held-out perplexity before and after.
Classifier shards: the image trainer's loss (``kdata.training.losses``: the teacher's distribution
rebuilt from stored top-k at the shards' scoring temperature, α·T²·KL + (1 − α)·CE on web labels);
held-out accuracy before and after. The shards' class names must be the student's, in the same order
(its ``id2label``): the stored class indices are used as the student's logit indices.
The teacher never runs. The student is saved with ``save_pretrained`` (safetensors) and its
tokenizer, with ``train_log.json`` beside them. With an eval set and ``keep_best`` the saved weights
are the best of the start and every epoch (``kept_epoch``, 0 = the starting weights; without
``keep_best``, the last epoch's); ``worse_than_before`` compares the *last epoch* with the start,
whichever weights were saved, so it says when training itself made the student worse.
The state after each epoch is kept in ``OUT/.resume/`` until the student is saved: a rerun after a
kill goes on from the last finished epoch (``kdata.training.checkpoint``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path

import torch

from kdata.core.atomic import write_json
from kdata.core.errors import KdataError, brief, printable
from kdata.core.lock import exclusive
from kdata.core.threads import one_thread
from kdata.core.warn import warn
from kdata.models.base import pick_device
from kdata.models.builtin_text import lr_at
from kdata.models.hf import load_text_model
from kdata.models.text_tokens import encode_texts
from kdata.scoring.text_batches import pad
from kdata.training.checkpoint import (Checkpoints, cpu_state, kept_rng, rng_state, seeded_rng, set_rng_state,
                                       shards_fingerprint, weights_checksum)
from kdata.training.config import TextTrainConfig, text_lr  # noqa: F401  (TextTrainConfig re-exported)
from kdata.training.losses import kd_loss, soft_targets
from kdata.training.shard_dataset import dataset_root, verify_source
from kdata.training.text_data import TextShards, eval_texts, shard_kind
from kdata.training.text_losses import accuracy, lm_distill_loss, perplexity
from kdata.training.weights import Best

DEFAULT_EVAL = "builtin:text-test"


WEIGHT_FILES = ("model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json")


def save_student(model, out: Path) -> None:
    """``save_pretrained`` into a temporary sibling, then each file renamed into ``out``. The old
    ``train_log.json`` (the mark of a finished run that ``kdata generate --rounds`` reuses) goes first and is
    written again last, and weight files the new save lacks are removed: a crash never leaves a log beside
    other weights, nor a stale single-file checkpoint beside a sharded one."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_log.json").unlink(missing_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.model.save_pretrained(str(tmp), safe_serialization=True)
        model.tokenizer.save_pretrained(str(tmp))
        new = {f.name for f in tmp.iterdir()}
        for pattern in WEIGHT_FILES:
            for old in out.glob(pattern):
                if old.name not in new:
                    old.unlink()
        for f in tmp.iterdir():
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_tokenizer(shards: TextShards, student, *, rows: int = 8) -> None:
    """Refuse a student whose tokenizer is not the teacher's that wrote the shards: every stored token
    id must be in its vocabulary, and the first rows' ``text`` must tokenise to their ``input_ids``."""
    import pyarrow.parquet as pq

    g = next((g for g in shards.groups if g.rows), None)
    if g is None:
        return
    cols = [c for c in ("text", "input_ids") if c in shards.columns]
    table = pq.ParquetFile(g.path).read_row_group(g.index, columns=cols).slice(0, rows)
    vocab = len(student.tokenizer)
    ids = [r["input_ids"] for r in table.to_pylist()]
    if any(i >= vocab or i < 0 for s in ids for i in s):
        raise KdataError(f"{g.path}: token ids beyond the student's vocabulary ({vocab}): the shards were "
                         "scored with another tokenizer; give a student that shares the teacher's tokenizer")
    if "text" in cols:
        mine = encode_texts(student.tokenizer, table.column("text").to_pylist(), max_length=10**9)
        if any(m[:len(s)] != s for m, s in zip(mine, ids)):
            raise KdataError(f"{g.path}: the student's tokenizer splits the text differently from the teacher's "
                             "that wrote the shards; token-level distillation needs the same tokenizer")


def _logit_width(model) -> int | None:
    """How many next-token logits the student gives: the stored top-k ids must index them."""
    head = model.model.get_output_embeddings() if hasattr(model.model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    return int(weight.shape[0]) if weight is not None else None


def check_classes(shards: TextShards, student, spec: str, *, where) -> None:
    """Refuse a classifier student whose class names (``id2label`` in id order) are not the shards'
    ``class_names`` in the same order: the stored top-k class indices and web labels index the
    shards' classes and are used as the student's logit indices. A student that names no classes
    (``transformers``' defaults ``LABEL_0`` … ``LABEL_{C-1}``) is taken in index order, as ``kdata select``
    takes it, when it has as many classes."""
    names, mine = shards.class_names, [str(n) for n in student.class_names]
    unnamed = mine == [f"LABEL_{i}" for i in range(len(mine))] and names is not None and len(names) == len(mine)
    if names is not None and names != mine and not unnamed:
        raise KdataError(f"{where}: shards were labelled with {len(names)} classes ({brief(names)}) but the "
                         f"student {spec} predicts {len(mine)} ({brief(mine)}); give a student whose id2label "
                         "(config.json) lists the shards' class_names in the same order")


def _measure(student, kind: str, ev: dict | None, cfg: TextTrainConfig) -> float | None:
    if ev is None:
        return None
    if kind == "causal_lm":
        return perplexity(student.model, ev["seqs"], pad_id=student.pad_id)
    return accuracy(student.model, student.tokenizer, ev["texts"], ev["labels"], max_length=cfg.max_length,
                    pad_id=student.pad_id)


def _eval_set(spec: str | None, student, kind: str, cfg: TextTrainConfig) -> dict | None:
    if spec is None:
        return None
    texts, labels = eval_texts(spec)
    if kind == "causal_lm":
        return {"spec": spec, "n": len(texts), "seqs": encode_texts(student.tokenizer, texts, max_length=cfg.max_length)}
    index = {n: i for i, n in enumerate(student.class_names)}
    keep = [(t, index[y]) for t, y in zip(texts, labels) if y in index]
    if not keep:
        raise KdataError(f"{spec}: no evaluation text has a label among the student's classes {student.class_names}")
    dropped = Counter("(no label)" if y is None else str(y) for y in labels if y not in index)
    if dropped:  # accuracy is over the rest: say which rows it leaves out (a case slip drops a whole class)
        shown = ", ".join(f"{printable(k)} ×{n}" for k, n in dropped.most_common(5))
        warn(f"{spec}: {sum(dropped.values())} evaluation row(s) not measured, their label is not among the "
             f"student's classes ({shown}{', …' if len(dropped) > 5 else ''}); accuracy on {len(keep)}", note=True)
    return {"spec": spec, "n": len(keep), "n_not_measured": sum(dropped.values()),
            "texts": [t for t, _ in keep], "labels": [y for _, y in keep]}


def _step_loss(student, batch: dict, kind: str, cfg: TextTrainConfig, device, *,
               score_temperature: float = 1.0) -> tuple[torch.Tensor, dict]:
    if kind == "causal_lm":
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = student.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss, kl, ce = lm_distill_loss(logits, batch, alpha=cfg.alpha)
        return loss, {"kl": kl, "ce": ce}
    ids, mask = pad(encode_texts(student.tokenizer, batch["text"], max_length=cfg.max_length), pad_id=student.pad_id,
                    device=device, min_width=1)
    logits = student.model(input_ids=ids, attention_mask=mask).logits.float()
    target = soft_targets(batch["topk_idx"].to(device), batch["topk_logit"].to(device), batch["topk_prob"].to(device),
                          num_classes=logits.shape[1], temperature=cfg.temperature,
                          score_temperature=score_temperature)
    loss = kd_loss(logits, target, batch["labels"].to(device), temperature=cfg.temperature, alpha=cfg.alpha)
    return loss, {}


def _optimise(student, shards: TextShards, kind: str, cfg: TextTrainConfig, device, progress,
              on_epoch=None, resume=None) -> dict:
    """The training loop: AdamW, warm-up + cosine schedule, gradient clipping; returns counts and losses.
    ``on_epoch(epoch)`` runs after each (possibly partial) epoch. ``resume``: (``Checkpoints``, the state
    to go on from or None, what else to save) — the state after each epoch is saved there."""
    per_epoch = shards.steps_per_epoch()
    total = cfg.steps if cfg.steps > 0 else cfg.epochs * per_epoch
    opt = torch.optim.AdamW(student.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, epoch, losses = 0, 0, []
    checkpoints, state, extra = resume or (None, None, dict)
    if state:  # a killed run's last finished epoch: go on from there
        student.model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        set_rng_state(state["rng"], device)
        step, epoch, losses = state["step"], state["epoch"], state["losses"]
        checkpoints.announce(state, epochs=-(-total // per_epoch))
    student.model.train()
    while step < total:
        for batch in shards.batches(epoch=epoch):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, steps=total, lr=cfg.lr, warmup=min(10, max(1, total // 10)))
            loss, parts = _step_loss(student, batch, kind, cfg, device, score_temperature=shards.temperature)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append({"loss": loss.item(), **parts})
            step += 1
            if progress:
                progress(f"epoch {epoch + 1}", min(step - epoch * per_epoch, per_epoch), per_epoch)
            if step >= total:
                break
        epoch += 1
        if on_epoch is not None:
            student.model.eval()
            on_epoch(epoch)
            student.model.train()
        if checkpoints is not None:
            losses = losses[-per_epoch:]  # all the log needs: the last epoch's
            checkpoints.save({"epoch": epoch, "step": step, "losses": losses, "model": cpu_state(student.model),
                              "opt": opt.state_dict(), "rng": rng_state(device), **extra()})
    student.model.eval()
    last = losses[-min(len(losses), per_epoch):]
    return {"steps": step, "epochs": epoch, "loss_last_epoch": sum(x["loss"] for x in last) / max(1, len(last))}


def text_shard_kind(shards) -> str:
    """The shards' kind (``causal_lm`` or ``classifier``); image shards are one line."""
    kind = shard_kind(shards)
    if kind == "image":
        raise KdataError(f"{shards}: image shards; a text student trains on text shards (kdata select with a text "
                         "pool and hf:/builtin:text-* models)")
    return kind


def student_shards(shards, model, *, kind: str, spec: str, **options) -> TextShards:
    """``shards`` as ``TextShards`` for the student ``model`` (``options``: batch size, seed…), once the
    student fits them — what ``kdata train`` checks before training, and the distill flow before its
    run: its kind matches the shards' soft labels, then ``check_tokenizer`` (causal LM: the tokenizer of
    the teacher that wrote the shards) or ``check_classes`` (classifier: the shards' classes, in order)."""
    check_student_kind(model, kind, spec)
    data = TextShards(shards, kind=kind, pad_id=model.pad_id, **options)
    if kind == "causal_lm":
        check_tokenizer(data, model)
    else:
        check_classes(data, model, spec, where=shards)
    return data


def check_student_kind(model, kind: str, student: str) -> None:
    """A causal-LM student for causal-LM shards, a classifier for classifier shards; else one line."""
    want = "causal_lm" if kind == "causal_lm" else "classifier"
    if model.kind != want:
        raise KdataError(f"{student}: a {model.kind.replace('_', ' ')}, but the shards hold "
                         f"{want.replace('_', ' ')} soft labels")


def train_text(*, shards, student: str, eval: str | None = DEFAULT_EVAL, config: TextTrainConfig | None = None,
               out: str | Path, verify: bool = True, progress=None, trust_remote_code: bool = False,
               test: str | None = None, request: str | None = None) -> dict:
    """Distil ``student`` on text ``shards`` (see the module doc); save it to ``out``; return the log.

    OUT is locked for the run and the state after each epoch kept in ``OUT/.resume/``: the same call
    after a kill goes on from the last finished epoch (``kdata.training.checkpoint``). ``test``: another
    set, never used to choose weights, on which the saved weights are measured once (``log["test"]``)."""
    cfg = config or TextTrainConfig()
    if cfg.epochs < 1 and cfg.steps < 1:
        raise KdataError("--epochs must be at least 1 (or give --steps)")
    if not 0.0 <= cfg.alpha <= 1.0:
        raise KdataError(f"--alpha {cfg.alpha}: must be between 0 and 1")
    verified = verify_source(shards) if verify else False  # before any shard is read
    kind = text_shard_kind(shards)
    with exclusive(out):
        return _train_text(shards=shards, student=student, eval=eval, cfg=cfg, kind=kind, out=Path(out),
                           verified=verified, progress=progress, trust_remote_code=trust_remote_code, test=test,
                           request=request)


def _train_text(*, shards, student: str, eval, cfg: TextTrainConfig, kind: str, out: Path, verified: bool, progress,
                trust_remote_code: bool, test: str | None, request: str | None = None) -> dict:
    t0 = time.perf_counter()
    device = pick_device(cfg.device)
    checkpoints = Checkpoints(out, request=request)
    with seeded_rng(cfg.seed, device):  # seeded for this run; the caller's torch RNG is restored after
        with kept_rng(device):  # a built-in student built on first use seeds torch itself: not the run's stream
            model = load_text_model(student, device=device, precision="fp32", trust_remote_code=trust_remote_code)
        lr, lr_reason = text_lr(cfg.lr, student)
        cfg = replace(cfg, max_length=min(cfg.max_length, model.max_length), lr=lr)  # the student's position limit
        data = student_shards(shards, model, kind=kind, spec=student, batch_size=cfg.batch_size, seed=cfg.seed,
                              max_length=cfg.max_length, vocab=_logit_width(model) if kind == "causal_lm" else None)
        if not len(data):
            raise KdataError(f"{shards}: no rows to train on")
        ev = _eval_set(eval, model, kind, cfg)
        tv = _eval_set(test, model, kind, cfg) if test else None  # opened (and checked) before any training
        state = checkpoints.open({"shards": shards_fingerprint(data.files, dataset_root(shards)), "student": student,
                                  "weights": weights_checksum(model.model), "kind": kind,
                                  "config": {k: v for k, v in asdict(cfg).items() if k != "device"},
                                  "eval": ev and [ev["spec"], ev["n"]]}, device)
        with one_thread() if device.type == "cpu" else nullcontext():
            before = state["before"] if state else _measure(model, kind, ev, cfg)
            best = (Best(model.model, before, lower_is_better=kind == "causal_lm")
                    if cfg.keep_best and ev else None)
            if best is not None and state:
                vars(best).update(state["best"])
            on_epoch = ((lambda e: best.offer(model.model, epoch=e, value=_measure(model, kind, ev, cfg)))
                        if best else None)

            def extra() -> dict:  # what else the state after an epoch holds
                return {"before": before, "best": best and {"value": best.value, "epoch": best.epoch,
                                                            "history": best.history, "state": best.state}}

            run = _optimise(model, data, kind, cfg, device, progress, on_epoch=on_epoch,
                            resume=(checkpoints, state, extra))
            last = after = _measure(model, kind, ev, cfg) if best is None else best.history[-1][1]
            if best is not None:
                after = best.restore(model.model)
                run["kept_epoch"], run["per_epoch"] = best.epoch, [{"epoch": e, "metric": m} for e, m in best.history]
            tested = _measure(model, kind, tv, cfg) if tv else None  # the saved weights, on a set that chose nothing
    save_student(model, out)
    metric = "perplexity" if kind == "causal_lm" else "accuracy"
    log = {"student": student, "kind": kind, "n_train": len(data), **run, "seconds": time.perf_counter() - t0,
           "eval": ev["spec"] if ev else None, "n_eval": ev["n"] if ev else 0,
           "n_eval_not_measured": ev.get("n_not_measured", 0) if ev else 0, "metric": metric,
           f"{metric}_before": before, f"{metric}_after": after, metric: after, f"{metric}_last": last,
           "verified": verified, "resumed_from_epoch": state["epoch"] if state else None,
           "out": str(out), "config": asdict(cfg), "lr": {"value": cfg.lr, "reason": lr_reason}, "device": str(device),
           **({"test": {"spec": tv["spec"], "n": tv["n"], metric: tested}} if tv else {})}
    if kind == "classifier":
        log["score_temperature"] = data.temperature
    if before is not None and last is not None:  # the last epoch against the start, whichever weights were kept
        log["worse_than_before"] = last > before if kind == "causal_lm" else last < before
    log["files"] = {"model": str(out / "model.safetensors"), "log": str(out / "train_log.json")}
    write_json(out / "train_log.json", log)
    checkpoints.clear()
    return log
