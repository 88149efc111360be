"""Model files users bring: ``.pt2`` (torch.export), ``.pt`` (TorchScript), ``open_clip:…``, ``timm:…``.

Exported models carry a sidecar ``<same stem>.json`` in the spirit of timm's ``pretrained_cfg``::

    {"input_size": [3, 224, 224], "mean": [...], "std": [...], "interpolation": "bilinear",
     "class_names": ["cat", "dog", ...], "outputs": ["logits", "features"]}

``outputs`` is optional (default ``["logits"]``); ``class_names`` is optional when the pool knows
its classes (image folders), which then must match the model's output size. Every loader runs one
probe forward pass on a batch of two before any scoring starts, so a wrong sidecar, a static batch
dimension or a class-count mismatch is one clear line and exit 2, not a traceback mid-run.

Nothing is unpickled beyond tensors: checkpoints load with ``torch.load(weights_only=True)``;
``.pt2`` and TorchScript archives load with their own loaders.

``export_model`` writes a trained module as ``.pt2`` (or ``.pt``) plus sidecar; modules with a
``features``/``head`` split (like ``DigitsNet``) or timm's ``forward_features``/``forward_head``
are exported returning ``(logits, features)`` so the penultimate features survive the export.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdata.core.atomic import sha256_file, write_json
from kdata.core.errors import KdataError
from kdata.models.base import Model, register_loader

INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box")
OUTPUTS = (["logits"], ["logits", "features"])

# Prompt templates for zero-shot classification: several phrasings averaged per class, as in
# CLIP's prompt ensembling (Radford et al. 2021, arXiv 2103.00020, sec. 3.1.4).
TEMPLATES = (
    "a photo of a {}.",
    "a good photo of a {}.",
    "a close-up photo of the {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of a {}.",
    "a picture of the {}.",
)

# Class names the pool knows (image-folder names), set by the pipeline while it loads models.
_POOL_CLASSES: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("kdata_pool_classes",
                                                                               default=None)


@contextlib.contextmanager
def pool_class_names(names: Sequence[str] | None):
    """While active, loaders use ``names`` for models that bring no class names of their own
    (zero-shot open_clip, sidecars without ``class_names``)."""
    token = _POOL_CLASSES.set(list(names) if names else None)
    try:
        yield
    finally:
        _POOL_CLASSES.reset(token)


def _first_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}".rstrip(": ")


# ------------------------------------------------------------------------------------------------
# Sidecar

def sidecar_path(model_path: str | os.PathLike) -> Path:
    return Path(model_path).with_suffix(".json")


def validate_sidecar(cfg: object, *, where: str, require_class_names: bool = False) -> dict:
    """Check a sidecar dict; return it normalised. Errors name the file and the field."""
    if not isinstance(cfg, dict):
        raise KdataError(f"{where}: expected a JSON object")

    def bad(field: str, why: str):
        raise KdataError(f"{where}: field '{field}' {why}")

    if "input_size" not in cfg:
        bad("input_size", "is missing (expected [C, H, W])")
    size = cfg["input_size"]
    if (not isinstance(size, list) or len(size) != 3 or not all(isinstance(v, int) and not isinstance(v, bool)
                                                                 and v > 0 for v in size)):
        bad("input_size", f"must be [C, H, W] with positive integers, got {size!r}")
    if size[0] not in (1, 3):
        bad("input_size", f"channel count must be 1 or 3, got {size[0]}")
    out = {"input_size": tuple(size)}
    for name in ("mean", "std"):
        if name not in cfg:
            bad(name, f"is missing (expected {size[0]} numbers)")
        v = cfg[name]
        if (not isinstance(v, list) or len(v) != size[0]
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
            bad(name, f"must be a list of {size[0]} numbers (one per channel), got {v!r}")
        if name == "std" and any(x <= 0 for x in v):
            bad(name, f"must be positive, got {v!r}")
        out[name] = tuple(float(x) for x in v)
    interp = cfg.get("interpolation", "bilinear")
    if interp not in INTERPOLATIONS:
        bad("interpolation", f"must be one of {', '.join(INTERPOLATIONS)}, got {interp!r}")
    out["interpolation"] = interp
    names = cfg.get("class_names")
    if names is None:
        if require_class_names:
            bad("class_names", "is missing")
    else:
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            bad("class_names", "must be a non-empty list of non-empty strings")
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            bad("class_names", f"lists '{dup}' more than once")
        out["class_names"] = list(names)
    outputs = cfg.get("outputs", ["logits"])
    if outputs not in OUTPUTS:
        bad("outputs", f"must be [\"logits\"] or [\"logits\", \"features\"], got {outputs!r}")
    out["outputs"] = list(outputs)
    return out


def read_sidecar(model_path: str | os.PathLike, *, required: bool = True) -> dict | None:
    path = sidecar_path(model_path)
    if not path.is_file():
        if required:
            raise KdataError(f"{model_path}: sidecar {path.name} not found (a JSON file with input_size, "
                             "mean, std, interpolation, class_names)")
        return None
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise KdataError(f"{path}: cannot read sidecar ({_first_line(exc)})") from None
    except json.JSONDecodeError as exc:
        raise KdataError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    cfg = validate_sidecar(cfg, where=str(path))
    cfg["_raw"] = path.read_bytes()
    return cfg


def _resolve_class_names(declared: list[str] | None, n_out: int, *, where: str) -> list[str]:
    """Class names for a model with ``n_out`` outputs: its own, else the pool's, else indices."""
    if declared is not None:
        if len(declared) != n_out:
            raise KdataError(f"{where}: class-count mismatch: the model outputs {n_out} classes but its "
                             f"sidecar lists {len(declared)} class_names")
        return declared
    hint = _POOL_CLASSES.get()
    if hint is not None:
        if len(hint) != n_out:
            raise KdataError(f"{where}: class-count mismatch: the model outputs {n_out} classes but the pool "
                             f"has {len(hint)} ({', '.join(hint[:5])}{', …' if len(hint) > 5 else ''})")
        return list(hint)
    return [str(i) for i in range(n_out)]


def _split_outputs(out) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(out, (tuple, list)):
        return out[0], (out[1] if len(out) > 1 else None)
    if isinstance(out, dict):
        return out["logits"], out.get("features")
    return out, None


def probe_outputs(fwd: Callable, input_size, device, *, where: str) -> tuple[int, int | None]:
    """One forward pass on a batch of two zeros → (classes, feature dim or None)."""
    x = torch.zeros((2, *input_size), device=device)
    try:
        with torch.inference_mode():
            logits, feats = fwd(x)
    except Exception as exc:
        raise KdataError(f"{where}: forward pass on a batch of shape {tuple(x.shape)} failed "
                         f"({_first_line(exc)}); check input_size and that the batch dimension is dynamic"
                         ) from None
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise KdataError(f"{where}: expected logits of shape (batch, classes), got {shape}")
    fdim = None
    if feats is not None:
        if feats.ndim != 2 or feats.shape[0] != 2:
            raise KdataError(f"{where}: expected features of shape (batch, dim), got {tuple(feats.shape)}")
        fdim = int(feats.shape[1])
    return int(logits.shape[1]), fdim


def _checksum(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode())
        h.update(b"\0")
    return "sha256:" + h.hexdigest()


class _Frozen(nn.Module):
    """Holds an exported/scripted program; ``eval()`` does not recurse (exported graphs refuse it)."""

    def __init__(self, program):
        super().__init__()
        self.program = program

    def train(self, mode: bool = True):
        self.training = mode
        return self

    def forward(self, x):
        return self.program(x)


def _channels_last(module: nn.Module, device: torch.device) -> None:
    if device.type == "cuda":
        with contextlib.suppress(Exception):
            module.to(memory_format=torch.channels_last)


# ------------------------------------------------------------------------------------------------
# .pt2 (torch.export) and .pt (TorchScript)

def _file_model(spec: str, *, device, kind: str) -> Model:
    path = Path(spec)
    if not path.is_file():
        raise KdataError(f"{spec}: model file not found")
    cfg = read_sidecar(path)
    device = torch.device(device)
    try:
        if kind == "pt2":
            program = torch.export.load(str(path)).module()
            with contextlib.suppress(Exception):
                program = program.to(device)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.jit.load(str(path), map_location=device)
                program.eval()
    except Exception as exc:
        what = "torch.export archive" if kind == "pt2" else "TorchScript archive"
        raise KdataError(f"{spec}: cannot load as a {what} ({_first_line(exc)})") from None
    module = _Frozen(program)
    _channels_last(module, device)
    with_feats = cfg["outputs"] == ["logits", "features"]

    def fwd(x):
        logits, feats = _split_outputs(module(x))
        return logits, (feats if with_feats else None)

    n_out, fdim = probe_outputs(fwd, cfg["input_size"], device, where=spec)
    if with_feats and fdim is None:
        raise KdataError(f"{sidecar_path(path)}: field 'outputs' declares features but the model returns logits only")
    names = _resolve_class_names(cfg.get("class_names"), n_out, where=spec)
    checksum = _checksum(sha256_file(path), cfg["_raw"], json.dumps(names))
    return Model(spec=spec, module=module, input_size=cfg["input_size"], mean=cfg["mean"], std=cfg["std"],
                 class_names=names, checksum=checksum, interpolation=cfg["interpolation"], forward_fn=fwd,
                 differentiable=False, extra={"format": kind, "feature_dim": fdim})


@register_loader(lambda s: s.endswith(".pt2") and not s.startswith(("open_clip:", "timm:")))
def load_pt2(spec: str, *, device="cpu") -> Model:
    return _file_model(spec, device=device, kind="pt2")


@register_loader(lambda s: s.endswith(".pt") and not s.startswith(("open_clip:", "timm:", "builtin:")))
def load_torchscript(spec: str, *, device="cpu") -> Model:
    return _file_model(spec, device=device, kind="pt")


class _LogitsAndFeatures(nn.Module):
    """Wraps a classifier so it returns (logits, penultimate features)."""

    def __init__(self, net: nn.Module, mode: str):
        super().__init__()
        self.net, self.mode = net, mode

    def forward(self, x):
        if self.mode == "timm":
            pre = self.net.forward_features(x)
            feats = self.net.forward_head(pre, pre_logits=True)
            return self.net.forward_head(pre), feats
        feats = self.net.features(x)
        return self.net.head(feats), feats


def _feature_mode(module: nn.Module) -> str | None:
    if callable(getattr(module, "features", None)) and isinstance(getattr(module, "head", None), nn.Module):
        return "features_head"
    if callable(getattr(module, "forward_features", None)) and callable(getattr(module, "forward_head", None)):
        return "timm"
    return None


@contextlib.contextmanager
def _atomic_same_suffix(path: Path):
    """Like ``atomic_path`` but the temporary name keeps the suffix (torch.export.save checks it)."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def export_model(module: nn.Module, path, *, input_size, mean, std, class_names, kind="pt2"):
    """Write ``module`` to ``path`` as a ``.pt2`` (torch.export, dynamic batch) or ``.pt``
    (TorchScript) archive plus the sidecar ``<stem>.json``; returns the model path.

    Modules with a features/head split are exported returning ``(logits, features)`` and the sidecar
    records ``"outputs": ["logits", "features"]``. Both files are written atomically.
    """
    path = Path(path)
    if kind not in ("pt2", "pt"):
        raise KdataError(f"{path}: kind must be 'pt2' or 'pt', got {kind!r}")
    if path.suffix != f".{kind}":
        raise KdataError(f"{path}: a kind='{kind}' export must be named *.{kind}")
    sidecar = {"input_size": [int(v) for v in input_size], "mean": [float(v) for v in mean],
               "std": [float(v) for v in std], "interpolation": "bilinear", "class_names": list(class_names)}
    validate_sidecar(sidecar, where=str(sidecar_path(path)), require_class_names=True)
    mode = _feature_mode(module)
    was_training = module.training
    device = next(iter(module.parameters()), torch.empty(0)).device
    module.eval()
    try:
        wrapped = _LogitsAndFeatures(module, mode).eval() if mode else module
        x = torch.zeros((2, *sidecar["input_size"]), device=device)
        with torch.no_grad():
            logits, feats = _split_outputs(wrapped(x))
        if logits.ndim != 2 or logits.shape[1] != len(sidecar["class_names"]):
            raise KdataError(f"{path}: class-count mismatch: the module outputs {tuple(logits.shape)} but "
                             f"{len(sidecar['class_names'])} class_names were given")
        sidecar["outputs"] = ["logits", "features"] if feats is not None else ["logits"]
        with _atomic_same_suffix(path) as tmp:
            if kind == "pt2":
                batch = torch.export.Dim("batch", min=1, max=1 << 16)
                ep = torch.export.export(wrapped, (x,), dynamic_shapes=({0: batch},))
                torch.export.save(ep, str(tmp))
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    traced = torch.jit.trace(wrapped, x, check_trace=False)
                    torch.jit.save(traced, str(tmp))
        write_json(sidecar_path(path), sidecar)
    finally:
        module.train(was_training)
    return path


# ------------------------------------------------------------------------------------------------
# timm:ARCH:CHECKPOINT

def _parse3(spec: str, prefix: str, what: str) -> tuple[str, str]:
    rest = spec[len(prefix):]
    arch, sep, weights = rest.partition(":")
    if not arch or not sep or not weights:
        raise KdataError(f"{spec}: expected {prefix}ARCH:{what}")
    return arch, weights


def _load_state(path: str, *, spec: str) -> dict:
    if not Path(path).is_file():
        raise KdataError(f"{spec}: checkpoint {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise KdataError(f"{spec}: cannot read checkpoint {path} ({_first_line(exc)})") from None
    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise KdataError(f"{spec}: checkpoint {path} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _timm_default_cfg(arch: str) -> dict:
    import timm

    cfg = timm.models.get_pretrained_cfg(arch, allow_unregistered=True)
    if cfg is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(timm.create_model(arch, pretrained=False).pretrained_cfg)
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(vars(cfg))


@register_loader(lambda s: s.startswith("timm:"))
def load_timm(spec: str, *, device="cpu") -> Model:
    import timm

    arch, ckpt = _parse3(spec, "timm:", "CHECKPOINT")
    if not timm.is_model(arch):
        raise KdataError(f"{spec}: unknown timm architecture '{arch}'")
    state = _load_state(ckpt, spec=spec)
    cfg = read_sidecar(ckpt, required=False)
    default = _timm_default_cfg(arch)
    classifier = default.get("classifier", "head")
    classifier = classifier[0] if isinstance(classifier, (list, tuple)) else classifier
    head_w = state.get(f"{classifier}.weight")
    if cfg is None:
        size = tuple(default.get("input_size", (3, 224, 224)))
        cfg = {"input_size": size, "mean": tuple(default.get("mean", (0.485, 0.456, 0.406))),
               "std": tuple(default.get("std", (0.229, 0.224, 0.225))),
               "interpolation": default.get("interpolation", "bilinear"), "_raw": b""}
        if cfg["interpolation"] not in INTERPOLATIONS:
            cfg["interpolation"] = "bilinear"
    num_classes = (len(cfg["class_names"]) if cfg.get("class_names") else
                   int(head_w.shape[0]) if head_w is not None else None)
    if num_classes is None:
        raise KdataError(f"{spec}: cannot tell the number of classes (no '{classifier}.weight' in the checkpoint "
                         f"and no class_names in {sidecar_path(ckpt).name})")
    if head_w is not None and int(head_w.shape[0]) != num_classes:
        raise KdataError(f"{spec}: class-count mismatch: the checkpoint's classifier has {head_w.shape[0]} outputs "
                         f"but {sidecar_path(ckpt).name} lists {num_classes} class_names")
    try:
        net = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=cfg["input_size"][0])
        net.load_state_dict(state, strict=True)
    except Exception as exc:
        raise KdataError(f"{spec}: checkpoint {ckpt} does not fit {arch} ({_first_line(exc)})") from None
    device = torch.device(device)
    net = net.to(device).eval()
    _channels_last(net, device)
    wrapped = _LogitsAndFeatures(net, "timm")
    n_out, fdim = probe_outputs(wrapped, cfg["input_size"], device, where=spec)
    names = _resolve_class_names(cfg.get("class_names"), n_out, where=spec)
    checksum = _checksum(sha256_file(ckpt), cfg["_raw"], arch, json.dumps(names))
    return Model(spec=spec, module=net, input_size=tuple(cfg["input_size"]), mean=tuple(cfg["mean"]),
                 std=tuple(cfg["std"]), class_names=names, checksum=checksum, interpolation=cfg["interpolation"],
                 forward_fn=wrapped, differentiable=True, extra={"format": "timm", "feature_dim": fdim})


# ------------------------------------------------------------------------------------------------
# open_clip:ARCH:WEIGHTS — zero-shot teacher and image embedder

class ZeroShotCLIP(nn.Module):
    """CLIP image tower + a fixed zero-shot head.

    ``logits = s · (f / ‖f‖) · Wᵀ (+ b)`` where ``f`` is the image embedding, ``W`` holds one row per
    class — the renormalised mean of the normalised text embeddings of that class's prompts — and
    ``s = exp(logit_scale)`` (``b``: SigLIP's logit bias, if the model has one). Features returned
    with the logits are the normalised image embeddings, used for dedup and the critic.
    """

    def __init__(self, visual: nn.Module, class_embeddings: torch.Tensor, scale: float, bias: float | None):
        super().__init__()
        self.visual = visual
        self.register_buffer("class_embeddings", class_embeddings)
        self.scale, self.bias = float(scale), bias

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(x).float(), dim=-1)

    def forward_both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        logits = self.scale * f @ self.class_embeddings.t()
        if self.bias is not None:
            logits = logits + self.bias
        return logits, f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_both(x)[0]


@contextlib.contextmanager
def _offline():
    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def open_clip_model(spec: str):
    """→ (open_clip model, arch name, weights digest, sidecar dict or None)."""
    import logging

    import open_clip

    arch, weights = _parse3(spec, "open_clip:", "WEIGHTS")
    arch_json = b""
    if arch.endswith(".json"):
        if not Path(arch).is_file():
            raise KdataError(f"{spec}: model config {arch} not found")
        try:
            arch_json = Path(arch).read_bytes()
            json.loads(arch_json)
        except (OSError, json.JSONDecodeError) as exc:
            raise KdataError(f"{arch}: cannot read open_clip model config ({_first_line(exc)})") from None
        open_clip.add_model_config(arch)
        arch = Path(arch).stem
    if arch not in open_clip.list_models():
        raise KdataError(f"{spec}: unknown open_clip architecture '{arch}' (see open_clip.list_models(), or pass "
                         "a model config .json)")
    is_file = Path(weights).is_file()
    if not is_file:
        looks_like_path = "/" in weights or os.sep in weights or Path(weights).suffix in (
            ".pt", ".pth", ".bin", ".safetensors", ".ckpt")
        if looks_like_path or weights not in open_clip.list_pretrained_tags_by_model(arch):
            raise KdataError(f"{spec}: checkpoint {weights} not found (a local file or a cached open_clip "
                             "pretrained tag)")
    prev = logging.getLogger().level
    try:
        logging.getLogger().setLevel(logging.ERROR)
        with _offline(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = open_clip.create_model(arch, pretrained=weights, weights_only=True, require_pretrained=True)
    except Exception as exc:
        where = weights if is_file else f"pretrained tag '{weights}'"
        hint = "" if is_file else " (not cached locally? pass a local checkpoint file)"
        raise KdataError(f"{spec}: cannot load {where} into open_clip {arch} ({_first_line(exc)}){hint}") from None
    finally:
        logging.getLogger().setLevel(prev)
    digest = sha256_file(weights) if is_file else f"tag:{weights}"
    return model.eval(), arch, _checksum(digest, arch_json, arch), _raw_json(weights) if is_file else None


def _raw_json(weights: str) -> dict | None:
    """Optional ``<weights stem>.json`` next to an open_clip checkpoint: class_names, templates."""
    path = sidecar_path(weights)
    if not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KdataError(f"{path}: cannot read sidecar ({_first_line(exc)})") from None
    if not isinstance(cfg, dict):
        raise KdataError(f"{path}: expected a JSON object")
    names = cfg.get("class_names")
    if names is not None and (not isinstance(names, list) or not names
                              or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names)):
        raise KdataError(f"{path}: field 'class_names' must be a non-empty list of distinct non-empty strings")
    templates = cfg.get("templates")
    if templates is not None and (not isinstance(templates, list) or not templates
                                  or not all(isinstance(t, str) and "{}" in t for t in templates)):
        raise KdataError(f"{path}: field 'templates' must be a non-empty list of strings containing '{{}}'")
    return cfg


def preprocess_of(model) -> tuple[tuple[int, int, int], tuple, tuple, str]:
    import open_clip

    pp = open_clip.get_model_preprocess_cfg(model)
    size = pp.get("size", 224)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    interp = pp.get("interpolation", "bicubic")
    interp = interp if interp in INTERPOLATIONS else "bicubic"
    return (3, int(h), int(w)), tuple(float(v) for v in pp["mean"]), tuple(float(v) for v in pp["std"]), interp


def class_text_embeddings(model, arch: str, class_names: Sequence[str], *, templates: Sequence[str] = TEMPLATES,
                          device="cpu", chunk: int = 512) -> torch.Tensor:
    """(K, D) zero-shot weights: per class, the mean of its normalised prompt embeddings, renormalised."""
    import open_clip

    tokenizer = open_clip.get_tokenizer(arch)
    prompts = [t.format(name.replace("_", " ")) for name in class_names for t in templates]
    embs = []
    with torch.inference_mode():
        for i in range(0, len(prompts), chunk):
            tokens = tokenizer(prompts[i:i + chunk]).to(device)
            embs.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
    e = torch.cat(embs).reshape(len(class_names), len(templates), -1).mean(dim=1)
    return F.normalize(e, dim=-1)


@register_loader(lambda s: s.startswith("open_clip:"))
def load_open_clip(spec: str, *, device="cpu") -> Model:
    """Zero-shot classifier over the sidecar's class names, else the pool's (image folders)."""
    model, arch, checksum, side = open_clip_model(spec)
    side = side or {}
    names = side.get("class_names") or _POOL_CLASSES.get()
    if not names:
        raise KdataError(f"{spec}: a zero-shot teacher needs class names: use a pool that has them (an image "
                         "folder) or list class_names in the checkpoint's sidecar .json")
    templates = side.get("templates") or list(TEMPLATES)
    device = torch.device(device)
    model = model.to(device)
    weights = class_text_embeddings(model, arch, names, templates=templates, device=device)
    bias = getattr(model, "logit_bias", None)
    head = ZeroShotCLIP(model.visual, weights, float(model.logit_scale.detach().exp()),
                        float(bias.detach()) if bias is not None else None).eval()
    for tower in ("transformer", "text"):  # the text tower is no longer needed (CLIP / CustomTextCLIP)
        if isinstance(getattr(model, tower, None), nn.Module):
            delattr(model, tower)
    _channels_last(head, device)
    input_size, mean, std, interp = preprocess_of(model)
    n_out, fdim = probe_outputs(head.forward_both, input_size, device, where=spec)
    assert n_out == len(names)
    return Model(spec=spec, module=head, input_size=input_size, mean=mean, std=std, class_names=list(names),
                 checksum=_checksum(checksum, json.dumps(list(names)), json.dumps(templates)),
                 interpolation=interp, forward_fn=head.forward_both, differentiable=True,
                 extra={"format": "open_clip", "feature_dim": fdim, "templates": templates})


# ------------------------------------------------------------------------------------------------
# Embedders (dedup, critic): image → L2-normalised feature vector
