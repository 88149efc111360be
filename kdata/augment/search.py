"""HARD's search for augmentation parameters that maximise teacher–student divergence.

Objective, maximised per sample (HARD, Nix, Burg & Sinz, arXiv 2305.14890)::

    J(θ) = KL(p_t^T(x') ‖ p_s^T(x')) − λ · max(0, max_{c≠y} z_c(x') − z_y(x') + m)

p^T are temperature-softened softmaxes, z the teacher logits, y the teacher's prediction on the
parent, x' the parent rendered with ``squash(θ)``. The hinge keeps the teacher's class from
flipping. Among all evaluated θ the best is the one with the highest KL whose teacher prediction
did not flip. Differentiable models get Adam on θ; models without an autograd path get a seeded
random search that proposes ``search_candidates`` perturbations of the current best per step, each
row's proposals drawn from that row's own generator (so they do not depend on the batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdata.augment.params import HardConfig, squash
from kdata.augment.transforms import forward_blocks, render, to_model
from kdata.models.spec import Model

GRADIENT, RANDOM_SEARCH = "gradient", "random_search"


def evaluate(theta, x, noise, y, *, teacher: Model, student: Model, cfg: HardConfig, bounds: dict):
    """Objective J, KL and teacher flip for each row of θ (graph kept when θ requires grad)."""
    xa = render(x, squash(theta, bounds), noise, max_sigma=bounds["blur_sigma"])
    zt, _ = forward_blocks(teacher, to_model(xa, teacher))
    zs, _ = forward_blocks(student, to_model(xa, student))
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


def gradient_ascent(theta0, x, noise, y, *, teacher, student, cfg, bounds):
    """Adam on θ for ``cfg.steps`` steps; the best non-flipping θ seen per sample."""
    theta = theta0.clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=cfg.lr)
    best = theta0.clone()
    best_kl = torch.full((len(theta0),), float("-inf"), device=theta0.device)
    for step in range(cfg.steps + 1):
        with torch.enable_grad():
            obj, kl, flipped = evaluate(theta, x, noise, y, teacher=teacher, student=student, cfg=cfg, bounds=bounds)
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
def random_search(theta0, x, noise, y, *, teacher, student, cfg, bounds, gens: list[torch.Generator]):
    """Gradient-free: per step, ``search_candidates`` seeded perturbations of the best θ (shrinking σ);
    row i's proposals come from ``gens[i]``."""
    n, p = theta0.shape
    r = max(1, cfg.search_candidates)
    best = theta0.clone()
    _, kl, flipped = evaluate(best, x, noise, y, teacher=teacher, student=student, cfg=cfg, bounds=bounds)
    best_kl = torch.where(flipped, torch.full_like(kl, float("-inf")), kl)

    def rep(t):
        return t.repeat_interleave(r, 0)

    xr, nr, yr = rep(x), rep(noise), rep(y)
    for step in range(cfg.steps):
        sigma = 0.6 * (1 - step / max(1, cfg.steps)) + 0.1
        step_noise = torch.cat([torch.randn(r, p, generator=g) for g in gens])  # (n * r, p), row by row
        cand = rep(best) + sigma * step_noise.to(theta0.device)
        _, kl, flipped = evaluate(cand, xr, nr, yr, teacher=teacher, student=student, cfg=cfg, bounds=bounds)
        kl = torch.where(flipped, torch.full_like(kl, float("-inf")), kl).view(n, r)
        top, arg = kl.max(1)
        better = top > best_kl
        best[better] = cand.view(n, r, p)[better, arg[better]]
        best_kl[better] = top[better]
    return best


def search_mode(config: HardConfig, teacher: Model, student: Model) -> str:
    """``random_search`` when forced or when either model is not differentiable, else ``gradient``."""
    if config.random_search or not (teacher.differentiable and student.differentiable):
        return RANDOM_SEARCH
    return GRADIENT


def not_differentiable(config: HardConfig, teacher: Model, student: Model) -> str | None:
    """Why ``search_mode`` chose the random search without being asked to (a model flagged not
    differentiable), else None."""
    if config.random_search:
        return None
    flagged = [m.spec for m in (teacher, student) if not m.differentiable]
    return f"not differentiable: {', '.join(flagged)}" if flagged else None


def optimise(theta, x, noise, y, *, teacher: Model, student: Model, cfg: HardConfig, bounds: dict,
             gens: list[torch.Generator], mode: str) -> tuple[torch.Tensor, str, str | None]:
    """The best θ for one batch: (best, mode for the next batch, fallback reason or None).

    ``gens``: one generator per row of θ (the random search's proposals).
    A ``gradient`` search whose models turn out to have no autograd path falls back to the
    random search, for this batch and every later one.
    """
    opts = {"teacher": teacher, "student": student, "cfg": cfg, "bounds": bounds}
    if mode == GRADIENT:
        try:
            return gradient_ascent(theta, x, noise, y, **opts), mode, None
        except RuntimeError as exc:  # the models have no autograd path after all
            fallback = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            return random_search(theta, x, noise, y, **opts, gens=gens), RANDOM_SEARCH, fallback
    return random_search(theta, x, noise, y, **opts, gens=gens), mode, None
