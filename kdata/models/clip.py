"""``open_clip:ARCH:WEIGHTS``: a zero-shot teacher and an image embedder.

WEIGHTS is a local checkpoint (checked by :mod:`kdata.models.pickle_scan` unless it is
``.safetensors``, then loaded under :func:`kdata.models.safe_load.untrusted_load`) or an
open_clip pretrained tag already in the local cache. An optional ``<weights stem>.json`` lists
``class_names`` and prompt ``templates``.

ARCH may be a model config ``.json``. Its ``text_cfg`` is checked when it is read: open_clip hands
``hf_tokenizer_name`` / ``hf_model_name`` and ``tokenizer_kwargs`` to transformers, which would fetch
a repo id from the Hub or run a directory's Python (``auto_map``, ``trust_remote_code``). So those
names must be local directories without ``auto_map``, and ``tokenizer_kwargs`` may hold only
:data:`TOKENIZER_OPTIONS`. There is no opt-in: ``--trust-remote-code`` applies to text models only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdata.core.digests import sha256_file_memo
from kdata.core.errors import KdataError
from kdata.core.extras import require
from kdata.models.base import Model, register_loader
from kdata.models.forward import channels_last, model_checksum, probe_outputs
from kdata.models.hf_safety import remote_code_file
from kdata.models.pickle_scan import check_checkpoint_file
from kdata.models.safe_load import LOAD_LOCK, untrusted_load
from kdata.models.sidecar import (INTERPOLATIONS, check_class_names, current_pool_class_names, first_line,
                                  read_json_file, sidecar_path)

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

# ``text_cfg.tokenizer_kwargs`` a config may set: the options of open_clip's own tokenizers (text
# clean-up, SEP stripping, language, token masking), each a plain value. Anything else would reach
# ``AutoTokenizer.from_pretrained`` (trust_remote_code, revision, token, cache_dir, ...) or make
# open_clip read another file (bpe_path).
TOKENIZER_OPTIONS = {"clean": str, "strip_sep_token": bool, "language": str, "reduction_mask": str}
HF_DIR_FIELDS = ("hf_tokenizer_name", "hf_model_name")  # text_cfg fields transformers loads from


def parse_spec(spec: str, prefix: str, what: str) -> tuple[str, str]:
    """``PREFIXARCH:REST`` → (ARCH, REST), or one line."""
    rest = spec[len(prefix):]
    arch, sep, weights = rest.partition(":")
    if not arch or not sep or not weights:
        raise KdataError(f"{spec}: expected {prefix}ARCH:{what}")
    return arch, weights


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
    """No hub request while a tag loads: only a locally cached tag loads. huggingface_hub reads its
    offline switch once, at import, so its module constant is set too (else each file is retried
    five times over 23 s before the tag is found missing)."""
    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    try:
        from huggingface_hub import constants as hub
    except ImportError:
        hub = None
    was = getattr(hub, "HF_HUB_OFFLINE", None)
    if hub is not None:
        hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if hub is not None:
            hub.HF_HUB_OFFLINE = was
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _arch_config(spec: str, arch: str) -> tuple[str, bytes]:
    """A ``.json`` model config, checked and registered with open_clip → (arch name, its bytes); else unchanged."""
    import open_clip

    if not arch.endswith(".json"):
        return arch, b""
    if not Path(arch).is_file():
        raise KdataError(f"{spec}: model config {arch} not found")
    try:
        arch_json = Path(arch).read_bytes()
        cfg = json.loads(arch_json)
    except (OSError, ValueError, RecursionError) as exc:
        raise KdataError(f"{arch}: cannot read open_clip model config ({first_line(exc)})") from None
    check_model_config(arch, cfg)
    open_clip.add_model_config(arch)
    return Path(arch).stem, arch_json


def check_model_config(path: str, cfg) -> None:
    """Refuse a model config whose text tower or tokenizer would make transformers download or run
    a directory's Python (module docstring); one line naming ``path`` and the field."""
    def bad(field: str, why: str):
        raise KdataError(f"{path}: field '{field}' {why}")

    if not isinstance(cfg, dict):
        raise KdataError(f"{path}: expected a JSON object")
    text = cfg.get("text_cfg", {})
    if not isinstance(text, dict):
        bad("text_cfg", "must be a JSON object")
    _check_tokenizer_kwargs(text.get("tokenizer_kwargs"), bad=bad)
    for field in HF_DIR_FIELDS:
        if text.get(field):
            _check_hf_dir(text[field], field=f"text_cfg.{field}", bad=bad)


def _check_tokenizer_kwargs(kwargs, *, bad) -> None:
    """Only :data:`TOKENIZER_OPTIONS`, each of its type: no trust_remote_code, revision, token, paths."""
    if kwargs is None:
        return
    if not isinstance(kwargs, dict):
        bad("text_cfg.tokenizer_kwargs", "must be a JSON object")
    for key, value in kwargs.items():
        want = TOKENIZER_OPTIONS.get(key)
        if want is None:
            bad(f"text_cfg.tokenizer_kwargs.{key}", f"is not allowed (kdata passes only {', '.join(TOKENIZER_OPTIONS)} "
                "to the tokenizer; it never runs a tokenizer's own code or fetches one)")
        if not isinstance(value, want):
            bad(f"text_cfg.tokenizer_kwargs.{key}", f"must be a {'boolean' if want is bool else 'string'}")


def _check_hf_dir(value, *, field: str, bad) -> None:
    """A transformers name must be a local directory with no ``auto_map`` (kdata never downloads, and
    runs no code from a model file)."""
    if not isinstance(value, str) or not Path(value).is_dir():
        bad(field, f"names {value!r}, not a local directory (kdata never downloads: point it at a local "
            "transformers directory)")
    found = remote_code_file(Path(value))
    if found is not None:
        bad(field, f"names {value}, whose {found.name} maps classes to the directory's own Python code "
            "(auto_map); refused: kdata runs no code from an open_clip model config")


def open_clip_model(spec: str):
    """→ (open_clip model on the CPU, arch name, weights digest, sidecar dict or None)."""
    require("clip", "open_clip")
    import open_clip

    arch, weights = parse_spec(spec, "open_clip:", "WEIGHTS")
    arch, arch_json = _arch_config(spec, arch)
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
    elif Path(weights).suffix not in (".safetensors", ".npz", ".npy"):
        check_checkpoint_file(weights, where=f"{spec}: cannot load {weights}")
    with LOAD_LOCK:  # the root logger level and the warnings filters are process-wide: one load at a time
        return _create(open_clip, arch, weights, arch_json, spec=spec, is_file=is_file)


def _create(open_clip, arch: str, weights: str, arch_json: bytes, *, spec: str, is_file: bool):
    """``open_clip.create_model`` offline, quiet and through ``untrusted_load``; the caller holds ``LOAD_LOCK``."""
    prev = logging.getLogger().level
    try:
        logging.getLogger().setLevel(logging.CRITICAL)  # open_clip logs a failed download before raising it
        with _offline(), warnings.catch_warnings(), untrusted_load(weights):
            warnings.simplefilter("ignore")
            model = open_clip.create_model(arch, pretrained=weights, weights_only=True, require_pretrained=True,
                                           device="cpu")
    except KdataError:
        raise
    except Exception as exc:
        if not is_file and "download" in str(exc).lower():
            raise KdataError(f"{spec}: pretrained tag '{weights}' is not in the local cache (kdata never downloads "
                             "weights: fetch them once with open_clip, or pass a local checkpoint file)") from None
        where = weights if is_file else f"pretrained tag '{weights}'"
        hint = "" if is_file else " (not cached locally? pass a local checkpoint file)"
        raise KdataError(f"{spec}: cannot load {where} into open_clip {arch} ({first_line(exc)}){hint}") from None
    finally:
        logging.getLogger().setLevel(prev)
    digest = sha256_file_memo(weights) if is_file else f"tag:{weights}"
    return model.eval(), arch, model_checksum(digest, arch_json, arch), _clip_sidecar(weights) if is_file else None


def _clip_sidecar(weights: str) -> dict | None:
    """Optional ``<weights stem>.json`` next to an open_clip checkpoint: class_names, templates."""
    path = sidecar_path(weights)
    if not path.is_file():
        return None
    cfg, _ = read_json_file(path)
    if not isinstance(cfg, dict):
        raise KdataError(f"{path}: expected a JSON object")

    def bad(field: str, why: str):
        raise KdataError(f"{path}: field '{field}' {why}")

    if cfg.get("class_names") is not None:
        check_class_names(cfg["class_names"], bad=bad)
    templates = cfg.get("templates")
    if templates is not None and (not isinstance(templates, list) or not templates
                                  or not all(isinstance(t, str) and "{}" in t for t in templates)):
        bad("templates", "must be a non-empty list of strings containing '{}'")
    return cfg


def preprocess_of(model) -> tuple[tuple[int, int, int], tuple, tuple, str]:
    """(input_size, mean, std, interpolation) from open_clip's preprocessing config."""
    import open_clip

    pp = open_clip.get_model_preprocess_cfg(model)
    size = pp.get("size", 224)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    interp = pp.get("interpolation", "bicubic")
    interp = interp if interp in INTERPOLATIONS else "bicubic"
    return (3, int(h), int(w)), tuple(float(v) for v in pp["mean"]), tuple(float(v) for v in pp["std"]), interp


def _tokenizer(arch: str, *, where: str):
    """``open_clip.get_tokenizer(arch)`` offline and under ``untrusted_load``; a transformers tokenizer gets
    ``trust_remote_code=False`` and ``local_files_only=True`` (open_clip lets them override the config's)."""
    import open_clip

    text = (open_clip.get_model_config(arch) or {}).get("text_cfg") or {}
    kw = {"trust_remote_code": False, "local_files_only": True} if text.get("hf_tokenizer_name") else {}
    try:
        with LOAD_LOCK, _offline(), untrusted_load(where):  # _offline sets process-wide switches
            return open_clip.get_tokenizer(arch, **kw)
    except KdataError:
        raise
    except Exception as exc:
        raise KdataError(f"{where}: cannot load the tokenizer of open_clip {arch} ({first_line(exc)})") from None


def class_text_embeddings(model, arch: str, class_names: Sequence[str], *, templates: Sequence[str] = TEMPLATES,
                          device="cpu", chunk: int = 512, where: str | None = None) -> torch.Tensor:
    """(K, D) zero-shot weights: per class, the mean of its normalised prompt embeddings, renormalised.
    ``where`` names the model in errors (default: ``arch``)."""
    tokenizer = _tokenizer(arch, where=where or arch)
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
    names = side.get("class_names") or current_pool_class_names()
    if not names:
        raise KdataError(f"{spec}: a zero-shot teacher needs class names: use a pool that has them (an image "
                         "folder) or list class_names in the checkpoint's sidecar .json")
    templates = side.get("templates") or list(TEMPLATES)
    device = torch.device(device)
    model = model.to(device)
    weights = class_text_embeddings(model, arch, names, templates=templates, device=device, where=spec)
    bias = getattr(model, "logit_bias", None)
    head = ZeroShotCLIP(model.visual, weights, float(model.logit_scale.detach().exp()),
                        float(bias.detach()) if bias is not None else None).eval()
    for tower in ("transformer", "text"):  # the text tower is no longer needed (CLIP / CustomTextCLIP)
        if isinstance(getattr(model, tower, None), nn.Module):
            delattr(model, tower)
    channels_last(head, device)
    input_size, mean, std, interp = preprocess_of(model)
    n_out, fdim = probe_outputs(head.forward_both, input_size, device, where=spec)
    assert n_out == len(names)
    return Model(spec=spec, module=head, input_size=input_size, mean=mean, std=std, class_names=list(names),
                 checksum=model_checksum(checksum, json.dumps(list(names)), json.dumps(templates)),
                 interpolation=interp, forward_fn=head.forward_both, differentiable=True,
                 extra={"format": "open_clip", "feature_dim": fdim, "templates": templates})
