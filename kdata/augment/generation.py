"""HARD's two passes over the parents: score them, then generate, render and re-score their augmentations.

Pass 1 (streamed) runs both models on each parent as scoring decodes it: the teacher's prediction
(the class the augmentation must keep), the KL before augmentation and the teacher's features
(the default critic's class centroids). Parents whose bytes no longer decode are skipped and counted.

Pass 2 works per chunk of ``batch_size // per_sample`` parents, so memory does not grow with the
dataset: optimise θ (``kdata.augment.search``), render, write the PNG, re-run both models on the
decoded PNG (exactly what the shards hold) and compute the default critic's scores. Every random
draw of a generated row (its starting θ, its noise pattern, its random-search proposals, the
critic's jitter) comes from that row's own generators (``kdata.augment.params.row_seeds``), so the
chunking (``batch_size``) does not change what a row becomes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from kdata.augment.filtering import class_centroids, default_critic_scores
from kdata.augment.params import PARAM_NAMES, HardConfig, generators, row_normal, squash, start_theta
from kdata.augment.search import not_differentiable, optimise
from kdata.augment.transforms import decode_batch, forward_blocks, png_bytes, render, to_pixels
from kdata.core.stats import disagreement
from kdata.models.spec import Model
from kdata.scoring.score import label_indices


@dataclass
class ParentPass:
    """The decodable parents and what pass 1 learnt about them."""

    table: pa.Table  # the parent rows that decoded
    images: list[bytes]
    kl: np.ndarray  # KL(teacher ‖ student) on the stored image
    pred: np.ndarray  # the teacher's prediction (int64)
    centroids: tuple | None  # (classes, unit-norm centroids) of the teacher's features, or None
    skipped: int  # parents whose bytes no longer decode

    @property
    def n(self) -> int:
        return len(self.images)


@dataclass
class Generated:
    """Pass 2's output, one entry per generated row (``src[i]`` is its parent's position)."""

    src: np.ndarray
    copy: np.ndarray  # the row's final copy index: it is named ``<parent>#hard<copy>``
    pngs: list[bytes] = field(default_factory=list)
    values: list = field(default_factory=list)  # bounded parameter values per chunk
    zt: list = field(default_factory=list)  # teacher logits on the decoded PNG, per chunk
    zs: list = field(default_factory=list)
    feat: list = field(default_factory=list)  # teacher features per chunk (None: the model has none)
    critic_parts: list = field(default_factory=list)  # default critic scores per chunk
    mode: str = ""
    fallback: str | None = None
    optimise_seconds: float = 0.0

    @property
    def n(self) -> int:
        return len(self.src)


def score_parents(parents: pa.Table, images: list, cand: np.ndarray, teacher: Model, student: Model, *,
                  batch_size: int, temperature: float, device) -> ParentPass:
    """Pass 1 over the candidate parents ``cand`` (row positions with image bytes), streamed."""
    keep_idx, kl_parts, pred_parts, feat_parts = [], [], [], []
    with torch.no_grad():
        for a in range(0, len(cand), batch_size):
            xt, xs, ok = [], [], []
            for i in cand[a:a + batch_size]:
                try:
                    xt.append(decode_batch([images[i]], teacher)[0])
                    xs.append(decode_batch([images[i]], student)[0])
                    ok.append(i)
                except Exception:
                    xt, xs = xt[:len(ok)], xs[:len(ok)]
            if not ok:
                continue
            zt, ft = forward_blocks(teacher, torch.stack(xt).to(device))
            zs, _ = forward_blocks(student, torch.stack(xs).to(device))
            keep_idx += ok
            kl_parts.append(disagreement(zt.float(), zs.float(), temperature=temperature)["kl_ts"].cpu().numpy())
            pred_parts.append(zt.argmax(1).cpu().numpy())
            feat_parts.append(None if ft is None else ft.float().cpu())
    keep_idx = np.array(keep_idx, dtype=np.int64)
    n_par = len(keep_idx)
    pred = np.concatenate(pred_parts).astype(np.int64) if pred_parts else np.zeros(0, np.int64)
    feat = torch.cat(feat_parts) if feat_parts and all(f is not None for f in feat_parts) else None
    return ParentPass(
        table=parents.take(pa.array(keep_idx)), images=[images[i] for i in keep_idx],
        kl=np.concatenate(kl_parts) if kl_parts else np.zeros(0, np.float32), pred=pred,
        centroids=class_centroids(feat, pred) if feat is not None and n_par else None,
        skipped=int(parents.num_rows - n_par))


def generate_rows(pp: ParentPass, teacher: Model, student: Model, *, config: HardConfig, bounds: dict,
                  mode: str, copy: np.ndarray, seeds: list[int], critic_seeds: list[int], device,
                  default_critic: bool) -> Generated:
    """Pass 2: ``config.per_sample`` augmentations of every parent, chunk by chunk.

    Row ``i`` (parent ``i // per_sample``) is named with copy index ``copy[i]``; ``seeds[i]`` seeds its
    search draws and ``critic_seeds[i]`` its default-critic jitter (``kdata.augment.params.row_seeds``).
    Raises ``RuntimeError`` when a model fails on a batch (the caller names the models).
    """
    k = config.per_sample
    out = Generated(src=np.repeat(np.arange(pp.n), k), copy=np.asarray(copy, dtype=np.int64), mode=mode,
                    fallback=not_differentiable(config, teacher, student))
    per = max(1, config.batch_size // k)
    for a in range(0, pp.n, per):
        pidx = np.arange(a, min(pp.n, a + per))
        rows = np.repeat(np.arange(len(pidx)), k)
        span = slice(a * k, (a + len(pidx)) * k)  # this chunk's generated rows
        pix = to_pixels(decode_batch([pp.images[i] for i in pidx], teacher), teacher)[rows].to(device)
        y_np = pp.pred[pidx][rows]
        y = torch.from_numpy(y_np).long().to(device)
        gens = generators(seeds[span])
        theta = start_theta(gens).to(device)
        noise = row_normal(gens, pix.shape[1:]).to(device)
        t_opt = time.perf_counter()
        best, out.mode, fallback = optimise(theta, pix, noise, y, teacher=teacher, student=student, cfg=config,
                                            bounds=bounds, gens=gens, mode=out.mode)
        out.fallback = fallback or out.fallback
        out.optimise_seconds += time.perf_counter() - t_opt
        with torch.no_grad():
            values = squash(best.detach(), bounds)
            gen_pix = render(pix, values, noise, max_sigma=bounds["blur_sigma"])
            chunk = png_bytes(gen_pix)
            zt, ft = forward_blocks(teacher, decode_batch(chunk, teacher).to(device))
            zs, _ = forward_blocks(student, decode_batch(chunk, student).to(device))
        out.pngs += chunk
        out.values.append(values.cpu())
        out.zt.append(zt.float().cpu())
        out.zs.append(zs.float().cpu())
        out.feat.append(None if ft is None else ft.float().cpu())
        if default_critic:
            out.critic_parts.append(default_critic_scores(
                gen_pix=gen_pix, y=y_np, t_probs=torch.softmax(zt.float(), -1), t_feat=ft, centroids=pp.centroids,
                teacher=teacher, draws=config.consistency_draws, gens=generators(critic_seeds[span]), device=device))
    return out


@dataclass
class Rescored:
    """Both models on the generated rows as written (the soft labels the shards store)."""

    stats: dict  # disagreement() columns as numpy arrays; empty when nothing was generated
    label_idx: np.ndarray  # the parent's web label as a class index, per generated row
    parent_pred: np.ndarray  # the teacher's prediction on the parent, per generated row
    flipped: np.ndarray  # the teacher's prediction on the generated row differs from the parent's
    zt: torch.Tensor | None
    zs: torch.Tensor | None
    feat: torch.Tensor | None
    values: torch.Tensor  # (n, P) bounded parameter values


def rescore(pp: ParentPass, g: Generated, teacher: Model, *, temperature: float, topk: int) -> Rescored:
    """The generated rows' soft-label columns, labels and teacher flips."""
    labels = pp.table.column("label") if "label" in pp.table.column_names else pa.nulls(pp.n, pa.string())
    lab_idx = label_indices(labels, teacher.class_names)[g.src] if g.n else np.zeros(0, np.int32)
    values = torch.cat(g.values) if g.values else torch.zeros(0, len(PARAM_NAMES))
    y_gen = pp.pred[g.src]
    st, zt, zs = {}, None, None
    if g.n:
        zt, zs = torch.cat(g.zt), torch.cat(g.zs)
        st = disagreement(zt, zs, temperature=temperature, topk=topk, label_idx=torch.from_numpy(lab_idx))
        st = {kk: v.numpy() for kk, v in st.items()}
        flipped = st["teacher_pred"].astype(np.int64) != y_gen
    else:
        flipped = np.zeros(0, bool)
    feat = torch.cat(g.feat) if g.feat and all(f is not None for f in g.feat) else None
    return Rescored(stats=st, label_idx=lab_idx, parent_pred=y_gen, flipped=flipped, zt=zt, zs=zs, feat=feat,
                    values=values)
