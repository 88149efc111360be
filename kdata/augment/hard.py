"""HARD: generate augmented samples where teacher and student disagree, then let a critic filter them.

HARD (Nix, Burg & Sinz, "HARD: Hard Augmentations for Robust Distillation", arXiv 2305.14890)
tunes an augmentation model to produce inputs on which the teacher and the student disagree,
while the teacher still recognises the input (so it stays a valid sample of its class). Symbolic
Knowledge Distillation (West et al., arXiv 2110.07178) adds the second half: generated data is
only worth keeping after a critic has filtered it.

Augmentation model
------------------
One learnable vector θ ∈ R^P per generated sample (``per_sample`` copies per parent, each from a
different seeded start), squashed by tanh into the bounds of ``DEFAULT_BOUNDS``:

* symmetric ``v = b·tanh θ`` — rotation, shear (degrees), translation (fraction of the image
  size), brightness (added, pixel units in [0, 1]);
* multiplicative ``v = exp(ln b · tanh θ)`` ∈ [1/b, b] — scale, contrast;
* one-sided ``v = b·(1 + tanh θ)/2`` ∈ [0, b] — Gaussian blur σ (pixels), noise std (pixel units).

The image x (de-normalised to [0, 1], at the teacher's input size) becomes
``x' = clamp(noise(bright(contrast(blur(affine(x))))), 0, 1)``: a bilinear ``grid_sample`` with the
sampling matrix ``R(rot)·Shear(shear)/scale`` plus translation (border padding), a separable Gaussian
blur whose kernel weights are a differentiable function of σ, contrast ``(x − mean)·c + mean``,
brightness ``x + b`` and a fixed seeded noise pattern times the learned std. Every step is a torch
op, so gradients flow to θ.

Objective (maximised per sample by Adam on θ, a few steps, whole batches on the device; parents are
streamed in chunks of ``batch_size // per_sample``, so memory does not grow with the dataset)::

    J(θ) = KL(p_t^T(x') ‖ p_s^T(x')) − λ · max(0, max_{c≠y} z_c(x') − z_y(x') + m)

p^T are temperature-softened softmaxes, z the teacher logits, y the teacher's prediction on the
parent. The hinge keeps the teacher's class from flipping: HARD constrains the augmentation so
that the sample stays valid, and here "valid" means the teacher still sees the parent's class. Among all evaluated θ the best is the one
with the highest KL whose teacher prediction did not flip; after generation a hard check re-runs
the teacher on the written PNG and rejects flipped rows as ``hard_teacher_flip``. Models that are
not differentiable (``Model.differentiable`` False, e.g. TorchScript run without autograd) get a
seeded random search over θ instead: each step proposes ``search_candidates`` perturbations of
the current best per sample and keeps the best non-flipping one.

Default critic (no trained critic given)
----------------------------------------
Three per-row scores in [0, 1] on the written image, combined by geometric mean:

* ``conf`` — the teacher's top probability (T = 1);
* ``consistency`` — fraction of ``consistency_draws`` small extra perturbations (±4° rotation,
  ±3% translation, noise std 0.02) under which the teacher still predicts the parent's class;
* ``typicality`` — ``d_other / (d_own + d_other)`` with ``d_own`` the cosine distance of the
  teacher's penultimate features of the generated image to the centroid of the parent class
  (centroids over the parents' features, grouped by the teacher's prediction) and ``d_other`` the
  distance to the nearest other class centroid: above 0.5 means the sample still sits nearer its
  own class in the teacher's embedding than any other class.

A row is accepted when the combined score ≥ ``critic_threshold`` (default 0.5, recorded in the
manifest). With a trained critic (``kdata.critic``) its ``accept`` decides instead.

Accounting: generated rows never enter the pool's ``n_in``; they have their own invariant
``generated == generated_kept + generated_rejected`` (rejections by reason: ``hard_teacher_flip``,
``critic_reject``), and every rejected row is written to ``excluded_synthetic.parquet``.
"""

from __future__ import annotations

import io
from pathlib import Path
import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from PIL import Image

from kdata.dataset.schema import SHARD_SCHEMA, conform
from kdata.core.errors import KdataError
from kdata.models.spec import Model
from kdata.models.images import decode_image
from kdata.scoring.score import label_indices
from kdata.core.stats import disagreement

PARAM_NAMES = ("rotation_deg", "scale", "shear_deg", "translate_x", "translate_y",
               "brightness", "contrast", "blur_sigma", "noise_std")
_KIND = {"rotation_deg": "sym", "shear_deg": "sym", "translate_x": "sym", "translate_y": "sym",
         "brightness": "sym", "scale": "log", "contrast": "log", "blur_sigma": "one", "noise_std": "one"}
# The magnitude b of each parameter (see the module docstring for how b bounds it).
DEFAULT_BOUNDS = {"rotation_deg": 20.0, "scale": 1.15, "shear_deg": 15.0, "translate_x": 0.1,
                  "translate_y": 0.1, "brightness": 0.15, "contrast": 1.4, "blur_sigma": 1.0,
                  "noise_std": 0.05}
# Small extra perturbations of the default critic's consistency check (absolute values).
_JITTER = {"rotation_deg": 4.0, "translate_x": 0.03, "translate_y": 0.03, "noise_std": 0.02}

HARD_COLUMNS = {"hard_params": pa.list_(pa.float32()), "kl_before": pa.float32(), "kl_after": pa.float32(),
                "critic_score": pa.float32()}
EXCLUDED_FILE = "excluded_synthetic.parquet"
FLIP, CRITIC_REJECT = "hard_teacher_flip", "critic_reject"


@dataclass(frozen=True)
class HardConfig:
    """How HARD generates and filters (all recorded in the manifest)."""

    per_sample: int = 1  # generated rows per parent
    steps: int = 10  # optimiser (or random-search) steps
    lr: float = 0.25  # Adam step on θ (the pre-tanh parameters)
    temperature: float | None = None  # softening of the KL objective; None: the soft labels' temperature
    flip_weight: float = 2.0  # λ of the teacher-flip hinge
    flip_margin: float = 0.5  # m: teacher logit margin kept for the parent's class
    search_candidates: int = 8  # random-search proposals per sample and step
    batch_size: int = 256  # generated samples per optimisation batch
    seed: int = 0
    bounds: tuple = ()  # ((name, b), ...) overrides of DEFAULT_BOUNDS
    critic_threshold: float = 0.5
    consistency_draws: int = 4
    random_search: bool = False  # force the gradient-free path

    def bound_values(self) -> dict[str, float]:
        b = dict(DEFAULT_BOUNDS)
        for name, v in dict(self.bounds).items():
            if name not in b:
                raise KdataError(f"HARD bounds: unknown parameter '{name}' (known: {', '.join(PARAM_NAMES)})")
            if not v > 0 or (_KIND[name] == "log" and not v > 1):
                raise KdataError(f"HARD bounds: '{name}' must be > {1 if _KIND[name] == 'log' else 0}, got {v}")
            b[name] = float(v)
        return b


def param_ranges(bounds: dict[str, float] | None = None) -> dict[str, tuple[float, float]]:
    """The closed interval each parameter can take under ``bounds``."""
    b = bounds or DEFAULT_BOUNDS
    out = {}
    for name in PARAM_NAMES:
        kind, v = _KIND[name], b[name]
        out[name] = (-v, v) if kind == "sym" else (1.0 / v, v) if kind == "log" else (0.0, v)
    return out


def squash(theta: torch.Tensor, bounds: dict[str, float]) -> torch.Tensor:
    """θ (N, P) → bounded parameter values (N, P) in PARAM_NAMES order."""
    t = torch.tanh(theta)
    cols = []
    for j, name in enumerate(PARAM_NAMES):
        b = bounds[name]
        kind = _KIND[name]
        if kind == "sym":
            cols.append(b * t[:, j])
        elif kind == "log":
            cols.append(torch.exp(math.log(b) * t[:, j]))
        else:
            cols.append(b * (t[:, j] + 1) / 2)
    return torch.stack(cols, 1)


# ------------------------------------------------------------------------------------------------
# The differentiable augmentation

def _affine(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    idx = {n: i for i, n in enumerate(PARAM_NAMES)}
    r = torch.deg2rad(v[:, idx["rotation_deg"]])
    h = torch.deg2rad(v[:, idx["shear_deg"]])
    s = v[:, idx["scale"]]
    cos, sin, tan = torch.cos(r), torch.sin(r), torch.tan(h)
    # sampling matrix R(r) · [[1, tan h], [0, 1]] / s ; translation in normalised coords (2 × fraction)
    a = torch.stack([torch.stack([cos, cos * tan - sin], 1),
                     torch.stack([sin, sin * tan + cos], 1)], 1) / s[:, None, None]
    t = 2 * torch.stack([v[:, idx["translate_x"]], v[:, idx["translate_y"]]], 1)
    theta = torch.cat([a, t[:, :, None]], 2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample σ (differentiable in σ; σ → 0 is the identity)."""
    n, c, h, w = x.shape
    rad = max(1, int(math.ceil(2 * max_sigma)))
    i = torch.arange(-rad, rad + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(i[None] ** 2) / (2 * sigma[:, None] ** 2 + 1e-4))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n*c, 2r+1)
    xp = F.pad(x, (rad, rad, rad, rad), mode="replicate").reshape(1, n * c, h + 2 * rad, w + 2 * rad)
    y = F.conv2d(xp, k[:, None, None, :], groups=n * c)
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def render(x: torch.Tensor, values: torch.Tensor, noise: torch.Tensor, *, max_sigma: float) -> torch.Tensor:
    """Apply bounded parameter ``values`` (N, P) to pixel images ``x`` (N, C, H, W) in [0, 1]."""
    idx = {n: i for i, n in enumerate(PARAM_NAMES)}
    y = _affine(x, values)
    y = _blur(y, values[:, idx["blur_sigma"]], max_sigma)
    mu = y.mean(dim=(2, 3), keepdim=True)
    y = (y - mu) * values[:, idx["contrast"], None, None, None] + mu
    y = y + values[:, idx["brightness"], None, None, None]
    y = y + values[:, idx["noise_std"], None, None, None] * noise
    return y.clamp(0.0, 1.0)


def to_model(pix: torch.Tensor, model: Model) -> torch.Tensor:
    """Pixel images in [0, 1] → the model's input (channels, size, normalisation)."""
    c, h, w = model.input_size
    if pix.shape[1] != c:
        if c == 1:
            wts = torch.tensor([0.299, 0.587, 0.114], device=pix.device, dtype=pix.dtype)[:, None, None]
            pix = (pix * wts).sum(1, keepdim=True)
        else:
            pix = pix.expand(-1, c, -1, -1)
    if pix.shape[-2:] != (h, w):
        pix = F.interpolate(pix, size=(h, w), mode="bilinear", align_corners=False)
    mean = torch.tensor(model.mean, device=pix.device, dtype=pix.dtype)[:, None, None]
    std = torch.tensor(model.std, device=pix.device, dtype=pix.dtype)[:, None, None]
    return (pix - mean) / std


def _to_pixels(x: torch.Tensor, model: Model) -> torch.Tensor:
    mean = torch.tensor(model.mean, dtype=x.dtype)[:, None, None]
    std = torch.tensor(model.std, dtype=x.dtype)[:, None, None]
    return (x * std + mean).clamp(0, 1)


def png_bytes(pix: torch.Tensor) -> list[bytes]:
    """(N, C, H, W) in [0, 1] → PNG bytes per image (L for one channel, RGB for three)."""
    arr = (pix.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    out = []
    for a in arr:
        im = Image.fromarray(a[0], "L") if a.shape[0] == 1 else Image.fromarray(np.moveaxis(a, 0, -1), "RGB")
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def decode_batch(images: list[bytes], model: Model) -> torch.Tensor:
    """Decode image bytes exactly as scoring does (``kdata.score.decode_image``) into one batch."""
    return torch.stack([decode_image(b, input_size=model.input_size, mean=model.mean, std=model.std,
                                     interpolation=model.interpolation) for b in images])


# ------------------------------------------------------------------------------------------------
# Optimisation

def _evaluate(theta, x, noise, y, teacher: Model, student: Model, cfg: HardConfig, bounds: dict):
    """Objective J, KL and teacher flip for each row of θ (graph kept when θ requires grad)."""
    xa = render(x, squash(theta, bounds), noise, max_sigma=bounds["blur_sigma"])
    zt, _ = teacher.forward(to_model(xa, teacher))
    zs, _ = student.forward(to_model(xa, student))
    if theta.requires_grad:
        for m, z in ((teacher, zt), (student, zs)):
            if not z.requires_grad:  # e.g. TorchScript run under inference mode
                raise RuntimeError(f"{m.spec}: no gradient path from its input to its output")
    zt, zs = zt.float(), zs.float()
    lt = torch.log_softmax(zt / cfg.temperature, -1)
    ls = torch.log_softmax(zs / cfg.temperature, -1)
    kl = (lt.exp() * (lt - ls)).sum(-1)
    zy = zt.gather(1, y[:, None])[:, 0]
    other = zt.masked_fill(F.one_hot(y, zt.shape[1]).bool(), float("-inf")).max(1).values
    hinge = torch.relu(other - zy + cfg.flip_margin)
    flipped = zt.argmax(1) != y
    return kl - cfg.flip_weight * hinge, kl, flipped


def _gradient_ascent(theta0, x, noise, y, teacher, student, cfg, bounds):
    theta = theta0.clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=cfg.lr)
    best = theta0.clone()
    best_kl = torch.full((len(theta0),), float("-inf"), device=theta0.device)
    for step in range(cfg.steps + 1):
        with torch.enable_grad():
            obj, kl, flipped = _evaluate(theta, x, noise, y, teacher, student, cfg, bounds)
            with torch.no_grad():
                better = (~flipped) & (kl > best_kl)
                best[better] = theta.detach()[better]
                best_kl[better] = kl.detach()[better]
            if step == cfg.steps:
                break
            (grad,) = torch.autograd.grad(-obj.sum(), theta)
        opt.zero_grad()
        theta.grad = grad
        opt.step()
    return best


@torch.no_grad()
def _random_search(theta0, x, noise, y, teacher, student, cfg, bounds, gen):
    n, p = theta0.shape
    r = max(1, cfg.search_candidates)
    best = theta0.clone()
    _, kl, flipped = _evaluate(best, x, noise, y, teacher, student, cfg, bounds)
    best_kl = torch.where(flipped, torch.full_like(kl, float("-inf")), kl)
    rep = lambda t: t.repeat_interleave(r, 0)  # noqa: E731
    xr, nr, yr = rep(x), rep(noise), rep(y)
    for step in range(cfg.steps):
        sigma = 0.6 * (1 - step / max(1, cfg.steps)) + 0.1
        cand = rep(best) + sigma * torch.randn(n * r, p, generator=gen).to(theta0.device)
        _, kl, flipped = _evaluate(cand, xr, nr, yr, teacher, student, cfg, bounds)
        kl = torch.where(flipped, torch.full_like(kl, float("-inf")), kl).view(n, r)
        top, arg = kl.max(1)
        better = top > best_kl
        best[better] = cand.view(n, r, p)[better, arg[better]]
        best_kl[better] = top[better]
    return best


def _init_theta(n: int, gen: torch.Generator) -> torch.Tensor:
    theta = 0.5 * torch.randn(n, len(PARAM_NAMES), generator=gen)
    for j, name in enumerate(PARAM_NAMES):
        if _KIND[name] == "one":
            theta[:, j] = -1.0 + 0.3 * torch.randn(n, generator=gen)  # start near no blur / no noise
    return theta


# ------------------------------------------------------------------------------------------------
# Critic

def _jitter_values(n: int, gen: torch.Generator) -> torch.Tensor:
    v = torch.zeros(n, len(PARAM_NAMES))
    for j, name in enumerate(PARAM_NAMES):
        if name in ("scale", "contrast"):
            v[:, j] = 1.0
        elif name in _JITTER:
            u = torch.rand(n, generator=gen)
            v[:, j] = _JITTER[name] * (u if name == "noise_std" else 2 * u - 1)
    return v


def class_centroids(feat: torch.Tensor, pred: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """Unit-norm mean teacher feature per predicted class: (classes, centroids)."""
    f = F.normalize(feat.float(), dim=1)
    classes = np.unique(pred)
    cent = torch.stack([f[torch.from_numpy(pred == c)].mean(0) for c in classes])
    return classes, F.normalize(cent, dim=1)


def default_critic_scores(*, gen_pix: torch.Tensor, y: np.ndarray, t_probs: torch.Tensor,
                          t_feat: torch.Tensor | None, centroids, teacher: Model, draws: int,
                          gen: torch.Generator, device) -> dict[str, np.ndarray]:
    """conf, consistency, typicality and their geometric mean ``score`` for each generated row."""
    n = len(y)
    conf = t_probs.max(1).values.cpu().numpy().astype(np.float64)
    agree = np.zeros(n)
    yt = torch.from_numpy(y).long()
    with torch.no_grad():
        for _ in range(max(1, draws)):
            v = _jitter_values(n, gen).to(device)
            noise = torch.randn(gen_pix.shape, generator=gen).to(device)
            xa = render(gen_pix, v, noise, max_sigma=0.5)
            zt, _ = teacher.forward(to_model(xa, teacher))
            agree += (zt.argmax(1).cpu() == yt).numpy()
    consistency = agree / max(1, draws)
    parts = [conf, consistency]
    typ = np.ones(n)
    if t_feat is not None and centroids is not None:
        classes, cent = centroids
        gf = F.normalize(t_feat.float().cpu(), dim=1)
        dist = (1 - gf @ cent.T).clamp_min(0).numpy()  # (n, classes) cosine distances
        own = np.searchsorted(classes, y)
        d_own = dist[np.arange(n), own]
        if len(classes) > 1:
            dist[np.arange(n), own] = np.inf
            d_other = dist.min(1)
            typ = d_other / np.maximum(d_own + d_other, 1e-12)
        parts.append(typ)
    score = np.exp(np.mean([np.log(np.clip(p, 1e-12, None)) for p in parts], axis=0))
    score[np.min(parts, axis=0) <= 0] = 0.0
    return {"conf": conf, "consistency": consistency, "typicality": typ, "score": score}


def _trained_critic(path: str, scores_table: pa.Table, *, recall: float | None = None
                    ) -> tuple[np.ndarray, np.ndarray, float]:
    """Accept mask, P(accept) and the cut of the fitted critic at ``path`` (``kdata.critic``)."""
    from kdata.selection.critic_model import load_critic

    crit = load_critic(path)
    if recall is not None:
        crit = crit.with_target(recall=recall)
    feats = crit.features(scores_table)
    return np.asarray(crit.accept(feats), dtype=bool), np.asarray(crit.score(feats), dtype=np.float64), \
        float(crit.threshold)


# ------------------------------------------------------------------------------------------------
# The stage

@dataclass
class HardResult:
    accepted: pa.Table  # shard-schema rows + HARD_COLUMNS, kind=synthetic
    excluded: pa.Table  # rejected generated rows with their reason
    info: dict = field(default_factory=dict)

    @property
    def counts(self) -> dict:
        return self.info["counts"]


def _fixed_list(arr: np.ndarray, typ: pa.DataType) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), arr.shape[1]).cast(typ)


def generate(parents: pa.Table, teacher: Model, student: Model, *, config: HardConfig = HardConfig(),
             critic: str | None = None, critic_recall: float | None = None, temperature: float = 1.0,
             topk: int = 5, device: torch.device | str = "cpu", existing_ids=None) -> HardResult:
    """Generate ``per_sample`` hard augmentations of every image row of ``parents``, critic-filter them.

    ``parents`` is a shard-schema table (curated rows). ``temperature``/``topk`` are those of the
    stored soft labels. ``existing_ids``: sample ids the new rows must not reuse (the dataset they
    join). Returns accepted rows (shard schema + HARD_COLUMNS) and excluded rows.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    device = torch.device(device)
    if config.temperature is None:
        config = replace(config, temperature=temperature)
    if config.per_sample < 1:
        raise KdataError(f"--hard/--per-sample {config.per_sample}: must be at least 1")
    bounds = config.bound_values()
    if "image" not in parents.column_names or parents.column("image").null_count == parents.num_rows:
        raise KdataError("HARD needs image rows; the curated table has no images")
    images = parents.column("image").to_pylist()
    cand = np.flatnonzero([b is not None and len(b) > 0 for b in images])
    k, bs = config.per_sample, config.batch_size
    mode = "random_search" if (config.random_search or not (teacher.differentiable and student.differentiable)) \
        else "gradient"
    gen = torch.Generator().manual_seed(config.seed)
    crit_gen = torch.Generator().manual_seed(config.seed + 7919)

    # pass 1, streamed: the parents' teacher prediction, KL before (on the stored image, decoded as
    # scoring decodes it) and teacher features (the default critic's class centroids). Parents
    # whose bytes no longer decode are skipped and counted.
    keep_idx, kl_parts, pred_parts, feat_parts = [], [], [], []
    with torch.no_grad():
        for a in range(0, len(cand), bs):
            xt, xs, ok = [], [], []
            for i in cand[a:a + bs]:
                try:
                    xt.append(decode_batch([images[i]], teacher)[0])
                    xs.append(decode_batch([images[i]], student)[0])
                    ok.append(i)
                except Exception:
                    xt, xs = xt[:len(ok)], xs[:len(ok)]
            if not ok:
                continue
            zt, ft = teacher.forward(torch.stack(xt).to(device))
            zs, _ = student.forward(torch.stack(xs).to(device))
            keep_idx += ok
            kl_parts.append(disagreement(zt.float(), zs.float(), temperature=temperature)["kl_ts"].cpu().numpy())
            pred_parts.append(zt.argmax(1).cpu().numpy())
            feat_parts.append(None if ft is None else ft.float().cpu())
    keep_idx = np.array(keep_idx, dtype=np.int64)
    n_par = len(keep_idx)
    skipped = int(parents.num_rows - n_par)
    par = parents.take(pa.array(keep_idx))
    par_images = [images[i] for i in keep_idx]
    kl_parent = np.concatenate(kl_parts) if kl_parts else np.zeros(0, np.float32)
    parent_pred = np.concatenate(pred_parts).astype(np.int64) if pred_parts else np.zeros(0, np.int64)
    parent_feat = torch.cat(feat_parts) if feat_parts and all(f is not None for f in feat_parts) else None
    centroids = class_centroids(parent_feat, parent_pred) if parent_feat is not None and n_par else None

    # pass 2, per chunk of parents (≤ batch_size generated rows): optimise θ, render, write the PNG,
    # re-run both models on the decoded PNG (exactly what the shards hold), default-critic scores
    src = np.repeat(np.arange(n_par), k)  # generated row → parent position
    copy = np.tile(np.arange(k), n_par)
    n_gen = len(src)
    per = max(1, bs // k)
    pngs: list[bytes] = []
    val_l, zt_l, zs_l, ft_l, crit_l = [], [], [], [], []
    fallback = None
    opt_seconds = 0.0
    try:
        for a in range(0, n_par, per):
            pidx = np.arange(a, min(n_par, a + per))
            rows = np.repeat(np.arange(len(pidx)), k)
            pix = _to_pixels(decode_batch([par_images[i] for i in pidx], teacher), teacher)[rows].to(device)
            y_np = parent_pred[pidx][rows]
            y = torch.from_numpy(y_np).long().to(device)
            theta = _init_theta(len(rows), gen).to(device)
            noise = torch.randn(pix.shape, generator=gen).to(device)
            t_opt = time.perf_counter()
            if mode == "gradient":
                try:
                    best = _gradient_ascent(theta, pix, noise, y, teacher, student, config, bounds)
                except RuntimeError as exc:  # the models have no autograd path after all
                    mode, fallback = "random_search", f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                    best = _random_search(theta, pix, noise, y, teacher, student, config, bounds, gen)
            else:
                best = _random_search(theta, pix, noise, y, teacher, student, config, bounds, gen)
            opt_seconds += time.perf_counter() - t_opt
            with torch.no_grad():
                values = squash(best.detach(), bounds)
                gen_pix = render(pix, values, noise, max_sigma=bounds["blur_sigma"])
                chunk = png_bytes(gen_pix)
                zt, ft = teacher.forward(decode_batch(chunk, teacher).to(device))
                zs, _ = student.forward(decode_batch(chunk, student).to(device))
            pngs += chunk
            val_l.append(values.cpu())
            zt_l.append(zt.float().cpu())
            zs_l.append(zs.float().cpu())
            ft_l.append(None if ft is None else ft.float().cpu())
            if not critic:
                crit_l.append(default_critic_scores(
                    gen_pix=gen_pix, y=y_np, t_probs=torch.softmax(zt.float(), -1), t_feat=ft, centroids=centroids,
                    teacher=teacher, draws=config.consistency_draws, gen=crit_gen, device=device))
    except RuntimeError as exc:
        raise KdataError(f"HARD: generation failed on {teacher.spec}/{student.spec}: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0]}", exit_code=1) from None
    gen_seconds = time.perf_counter() - t0
    labels = par.column("label") if "label" in par.column_names else pa.nulls(n_par, pa.string())
    lab_idx = label_indices(labels, teacher.class_names)[src] if n_gen else np.zeros(0, np.int32)
    values = torch.cat(val_l) if val_l else torch.zeros(0, len(PARAM_NAMES))
    y_gen = parent_pred[src]
    if n_gen:
        zt_g, zs_g = torch.cat(zt_l), torch.cat(zs_l)
        st = disagreement(zt_g, zs_g, temperature=temperature, topk=topk, label_idx=torch.from_numpy(lab_idx))
        st = {kk: v.numpy() for kk, v in st.items()}
        flipped = st["teacher_pred"].astype(np.int64) != y_gen
    else:
        flipped = np.zeros(0, bool)
    gen_feat = torch.cat(ft_l) if ft_l and all(f is not None for f in ft_l) else None

    # critic
    reason = np.where(flipped, FLIP, None).astype(object)
    critic_score = np.full(n_gen, np.nan)
    critic_kind = "default"
    trained_cut = None
    crit_parts: dict = {}
    alive = ~flipped
    if n_gen and alive.any():
        if critic:
            critic_kind = f"trained:{critic}"
            scores_tbl = _scores_like(par, src, st, zt_g, zs_g, gen_feat, lab_idx)
            acc, critic_score, trained_cut = _trained_critic(critic, scores_tbl, recall=critic_recall)
            reason[alive & ~acc] = CRITIC_REJECT
        else:
            crit_parts = {kk: np.concatenate([c[kk] for c in crit_l]) for kk in crit_l[0]}
            critic_score = crit_parts["score"]
            reason[alive & (critic_score < config.critic_threshold)] = CRITIC_REJECT
    accepted_mask = np.array([r is None for r in reason], dtype=bool)

    # assemble rows
    ids = par.column("sample_id").to_pylist()
    cols = {
        "sample_id": pa.array(_new_ids(ids, src, copy, k, taken=existing_ids), pa.string()),
        "image": pa.array(pngs, pa.binary()),
        "parent_id": pa.array([ids[p] for p in src], pa.string()),
        "kind": pa.array(["synthetic"] * n_gen, pa.string()),
        "label_idx": pa.array(lab_idx, pa.int32()),
    }
    for name in ("label", "source", "domain"):
        if name in par.column_names:
            cols[name] = par.column(name).combine_chunks().take(pa.array(src)) if n_gen else pa.nulls(0, pa.string())
    if n_gen:
        for name, v in st.items():
            if name in SHARD_SCHEMA.names:
                typ = SHARD_SCHEMA.field(name).type
                cols[name] = _fixed_list(v, typ) if v.ndim == 2 else pa.array(v).cast(typ)
    cols["hard_params"] = _fixed_list(values.numpy().astype(np.float32), HARD_COLUMNS["hard_params"]) if n_gen \
        else pa.array([], HARD_COLUMNS["hard_params"])
    cols["kl_before"] = pa.array(kl_parent[src].astype(np.float32), pa.float32())
    cols["kl_after"] = pa.array(st["kl_ts"].astype(np.float32) if n_gen else np.zeros(0, np.float32), pa.float32())
    cols["critic_score"] = pa.array(critic_score.astype(np.float32), pa.float32())
    table = conform(pa.table(cols), SHARD_SCHEMA, extra=HARD_COLUMNS)
    accepted = table.filter(pa.array(accepted_mask))
    excluded = table.filter(pa.array(~accepted_mask))
    excluded = excluded.append_column("reason", pa.array(reason[~accepted_mask].tolist(), pa.string()))
    excluded = excluded.append_column("parent_teacher_pred", pa.array(y_gen[~accepted_mask].astype(np.int32)))

    n_flip = int(flipped.sum())
    n_crit = int(sum(r == CRITIC_REJECT for r in reason))
    counts = {"generated": n_gen, "generated_kept": int(accepted_mask.sum()),
              "generated_rejected": int((~accepted_mask).sum()),
              "generated_rejected_by_reason": {kk: v for kk, v in ((FLIP, n_flip), (CRITIC_REJECT, n_crit)) if v},
              "hard_parents": n_par, "hard_parents_skipped": skipped}
    check_generated_accounting(counts)
    med = lambda a: float(np.median(a)) if len(a) else None  # noqa: E731
    info = {
        "counts": counts, "mode": mode, "param_names": list(PARAM_NAMES), "bounds": bounds,
        "ranges": {kk: list(v) for kk, v in param_ranges(bounds).items()},
        "config": {kk: (list(v) if isinstance(v, tuple) else v) for kk, v in config.__dict__.items()},
        "critic": critic_kind, "critic_threshold": trained_cut if critic else config.critic_threshold,
        "critic_accept_rate": (float(accepted_mask.sum() / alive.sum()) if alive.any() else None),
        "teacher_flip_rate": float(n_flip / n_gen) if n_gen else None,
        "median_kl_parents": med(kl_parent), "median_kl_generated": med(st["kl_ts"]) if n_gen else None,
        "median_kl_generated_kept": med(st["kl_ts"][accepted_mask]) if n_gen and accepted_mask.any() else None,
        "seconds": gen_seconds, "optimise_seconds": opt_seconds, "cpu_seconds": time.process_time() - c0,
        "samples_per_second": float(n_gen / gen_seconds) if gen_seconds > 0 and n_gen else None,
        "excluded_file": EXCLUDED_FILE, "temperature": temperature,
    }
    if fallback:
        info["fallback_reason"] = fallback
    if crit_parts:
        info["critic_component_medians"] = {kk: med(v[alive]) for kk, v in crit_parts.items()}
    return HardResult(accepted=accepted, excluded=excluded, info=info)


def _new_ids(ids: list[str], src: np.ndarray, copy: np.ndarray, k: int, *, taken=None) -> list[str]:
    """``<parent>#hard<c>``; an id already in ``taken`` (an earlier augmentation) moves to c + k, c + 2k, …"""
    taken = set(taken or ())
    out = []
    for p, c in zip(src, copy):
        c = int(c)
        while (name := f"{ids[p]}#hard{c}") in taken:
            c += k
        taken.add(name)
        out.append(name)
    return out


def _scores_like(par, src, st, zt, zs, feat, lab_idx) -> pa.Table:
    """The generated rows as a scores-schema table (what a trained critic reads)."""
    from kdata.dataset.schema import SCORES_OPTIONAL, SCORES_SCHEMA

    ids = par.column("sample_id").to_pylist()
    cols = {"sample_id": pa.array([f"{ids[p]}#hard" for p in src], pa.string()),
            "label_idx": pa.array(lab_idx, pa.int32())}
    for f in SCORES_SCHEMA:
        if f.name in st:
            v = st[f.name]
            cols[f.name] = _fixed_list(v, f.type) if v.ndim == 2 else pa.array(v).cast(f.type)
    cols["teacher_logits"] = _fixed_list(zt.cpu().numpy(), SCORES_OPTIONAL["teacher_logits"])
    cols["student_logits"] = _fixed_list(zs.cpu().numpy(), SCORES_OPTIONAL["student_logits"])
    if feat is not None:
        cols["embedding"] = _fixed_list(feat.numpy().astype(np.float16), SCORES_OPTIONAL["embedding"])
    return pa.table(cols)


def check_generated_accounting(counts: dict) -> None:
    """generated == generated_kept + generated_rejected, and the reasons add up."""
    if counts["generated"] != counts["generated_kept"] + counts["generated_rejected"]:
        raise RuntimeError(f"HARD accounting broken: {counts}")
    if sum(counts["generated_rejected_by_reason"].values()) != counts["generated_rejected"]:
        raise RuntimeError(f"HARD rejection reasons do not add up: {counts}")


def combine(curated: pa.Table, result: HardResult) -> pa.Table:
    """Curated rows followed by the accepted generated rows (originals get null HARD columns)."""
    if not result.accepted.num_rows:
        return curated
    return pa.concat_tables([curated, result.accepted], promote_options="default")


def write_excluded(result: HardResult, path) -> None:
    from kdata.core.atomic import write_parquet

    write_parquet(path, result.excluded, row_group_size=1024)


def pipeline_hard(curated: pa.Table, *, cfg, teacher, student, device, counts: dict) -> tuple[pa.Table, HardResult]:
    """The ``--hard K`` stage of ``kdata select``: K per kept row, critic-filtered, appended.

    Adds the generated-row counts to ``counts`` (the pool's own n_in accounting is untouched).
    """
    if not isinstance(teacher, Model) or not isinstance(student, Model):
        raise KdataError("--hard needs teacher and student models (it cannot run on --scores predictions)")
    result = generate(curated, teacher, student, config=HardConfig(per_sample=int(cfg.hard), seed=cfg.seed),
                      critic=cfg.critic, critic_recall=cfg.critic_recall, temperature=cfg.temperature,
                      topk=cfg.topk, device=device, existing_ids=curated.column("sample_id").to_pylist())
    counts.update({k: v for k, v in result.counts.items()})
    return combine(curated, result), result


def manifest_section(result: HardResult) -> dict:
    """What the manifest records about HARD (JSON-able)."""
    info = {k: v for k, v in result.info.items() if k != "counts"}
    return {**info, "counts": result.counts}


def augment_dataset(shards: str, *, teacher: str, student: str, out: str, config: HardConfig = HardConfig(),
                    critic: str | None = None, critic_recall: float | None = None, device="cpu"):
    """``kdata augment``: a curated dataset + its accepted HARD rows, written as a new dataset.

    Parents are the non-synthetic rows of ``shards``; every input row is copied (``n_in == kept``)
    and the generated rows are accounted separately. Returns a ``RunReport``.
    """
    import hashlib
    import json

    from kdata.core.atomic import write_json
    from kdata.dataset.schema import validate_shard
    from kdata.models.spec import load_model
    from kdata.pipeline.run import RunReport, _jsonable
    from kdata.scoring.score import check_models
    from kdata.dataset.writer import MANIFEST, Staging, build_manifest, check_output_dir, read_manifest, read_shards, shard_paths, write_decisions, write_shards

    t0 = time.perf_counter()
    src = read_manifest(shards)
    if src is None:
        raise KdataError(f"{shards}: not a kdata dataset (no manifest.json)")
    paths = shard_paths(shards)
    table = read_shards(shards)
    validate_shard(table.schema, where=str(paths[0]))
    if Path(out).resolve() == Path(shards).resolve():
        raise KdataError(f"{out}: --out must differ from --shards")
    tm, sm = load_model(teacher, device=device), load_model(student, device=device)
    check_models(tm, sm)
    temperature, topk = float(src.get("temperature", 1.0)), int(src.get("topk", 5))
    source_id = src.get("config_hash") or hashlib.sha256(
        "".join(f["sha256"] for f in src["files"]).encode()).hexdigest()
    cfg = {"op": "augment", "source": source_id, "source_files": [f["sha256"] for f in src["files"]],
           "teacher": tm.checksum, "student": sm.checksum, "critic": critic, "critic_recall": critic_recall,
           "hard": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.__dict__.items()}}
    config_hash = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()
    if check_output_dir(out, config_hash=config_hash) == "done":
        m = read_manifest(out)
        return RunReport(out=str(out), counts=m["counts"], files=m["files"], seconds=0.0, status="already complete",
                         info={"hard": m.get("hard")})
    kind = table.column("kind").to_pylist() if "kind" in table.column_names else [None] * table.num_rows
    is_parent = np.array([k != "synthetic" for k in kind], dtype=bool)
    result = generate(table.filter(pa.array(is_parent)), tm, sm, config=config, critic=critic,
                      critic_recall=critic_recall, temperature=temperature, topk=topk, device=device,
                      existing_ids=table.column("sample_id").to_pylist())
    n = table.num_rows
    counts = {"n_in": n, "kept": n, "rejected": 0, "quarantined": 0, "rejected_by_reason": {}, **result.counts}
    combined = combine(table, result)
    decisions = pa.table({"sample_id": table.column("sample_id"), "decision": pa.array(["kept"] * n, pa.string()),
                          "reason": pa.nulls(n, pa.string()), "stage": pa.array(["input"] * n, pa.string()),
                          "error": pa.nulls(n, pa.string())})
    for name in ("label", "label_idx", "teacher_pred", "student_pred", "teacher_conf", "kl_ts"):
        if name in table.column_names:
            decisions = decisions.append_column(name, table.column(name))
    meta = {"schema_version": src.get("schema_version", "1.0"), "kdata_version": src.get("kdata_version"),
            "temperature": temperature, "topk": topk, "class_names": tm.class_names, "teacher": tm.spec,
            "student": sm.spec, "config_hash": config_hash, "source_config_hash": source_id}
    staging = Staging(out)
    try:
        files = write_shards(combined, staging.path, meta=meta,
                             rows_per_shard=int(src.get("config", {}).get("rows_per_shard", 10_000)))
        write_decisions(decisions, staging.path / "decisions.parquet")
        write_excluded(result, staging.path / EXCLUDED_FILE)
        manifest = build_manifest(
            files=files, config=cfg, config_hash=config_hash,
            models={"teacher": tm.describe(), "student": sm.describe()}, counts=counts,
            extra={"temperature": temperature, "topk": topk, "class_names": tm.class_names,
                   "source": {"path": str(shards), "config_hash": source_id, "methods": src.get("methods")},
                   "hard": _jsonable(manifest_section(result))})
        write_json(staging.path / MANIFEST, manifest)
        staging.commit()
    except BaseException:
        staging.abort()
        raise
    return RunReport(out=str(out), counts=counts, files=files, seconds=time.perf_counter() - t0,
                     info={"hard": _jsonable(manifest_section(result))})
