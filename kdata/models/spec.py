"""Model specs → loaded models with their preprocessing config.

A spec is a string: ``builtin:digits-teacher``, ``path/model.pt2``, ``path/model.pt``,
``open_clip:ARCH:WEIGHTS``, ``timm:ARCH:CHECKPOINT``, ``hf:PATH`` (a local transformers directory:
kdata.models.hf). Loaders register a predicate on the spec;
the first that claims a spec loads it. Every loaded model knows its input size, normalisation,
class names and a checksum of its weights, which the manifest records.
"""

from __future__ import annotations

import torch

from kdata.core.device_names import check_device_name
from kdata.core.errors import KdataError
from kdata.core.paths import spec_text


from kdata.models.base import Model, loaders, pick_device, register_loader  # noqa: F401  (re-exported)
from kdata.models import builtin as _builtin  # noqa: F401  (loaders register themselves on import)
from kdata.models import files as _files  # noqa: F401  (.pt2 / TorchScript / timm)
from kdata.models import clip as _clip  # noqa: F401  (open_clip)
from kdata.models.hf import is_text_spec, load_text_model


def load_model(spec: str, *, device: str | torch.device = "cpu", trust_remote_code: bool = False,
               max_length: int | None = None, precision: str = "auto") -> Model:
    """Load a model spec; raise a one-line KdataError when it is missing or unreadable.

    ``hf:PATH`` and ``builtin:text-*`` load as ``kdata.models.hf.HFModel`` (``trust_remote_code``,
    ``max_length`` and ``precision`` apply to them only)."""
    spec = spec_text(spec, what="model")
    if isinstance(device, str):
        check_device_name(device)
    if is_text_spec(spec):
        return load_text_model(spec, device=device, precision=precision, trust_remote_code=trust_remote_code,
                               max_length=max_length)
    for claims, fn in loaders():
        if claims(spec):
            model = fn(spec, device=device)
            model.module.eval()
            return model
    raise KdataError(f"unknown model spec '{spec}' (try builtin:digits-teacher, a .pt2/.pt file, "
                     "open_clip:ARCH:WEIGHTS or timm:ARCH:CHECKPOINT)")
