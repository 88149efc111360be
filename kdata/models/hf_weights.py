"""A Hugging Face model directory's safetensors weights checked against its config.json before loading.

``from_pretrained`` fills any parameter the files lack with random values and allocates what
config.json describes, whatever the files hold: a 40-byte ``model.safetensors`` with no tensors
loaded as a random model, and a config asking for thousands of layers allocated them.
``check_safetensors`` reads only the files' headers (names, shapes) and builds the architecture on
the ``meta`` device (no memory), and refuses in one line what does not fit.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kdata.core.errors import KdataError

FATAL = (KeyboardInterrupt, SystemExit, MemoryError, GeneratorExit)  # never turned into a one-line error


def _file_tensors(files: list[Path]) -> dict[str, tuple[tuple[int, ...], Path]]:
    """Tensor name → (shape, file) from the safetensors headers only (no tensor data is read)."""
    from safetensors import safe_open

    out = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as sf:
                for k in sf.keys():
                    out[k] = (tuple(sf.get_slice(k).get_shape()), f)
        except FATAL:
            raise
        except BaseException as exc:  # noqa: BLE001  (a broken header: one line)
            msg = str(exc).strip().splitlines()
            raise KdataError(f"{f}: not a readable safetensors file ({type(exc).__name__}: "
                             f"{msg[0][:160] if msg else ''})") from None
    return out


def _meta_model(path: Path, auto, *, trust_remote_code: bool):
    """The architecture from config.json on the ``meta`` device (no memory for weights), tied as loading ties it."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = auto.from_config(cfg, trust_remote_code=trust_remote_code, dtype=torch.float32)
    model.tie_weights()
    return cfg, model


def check_safetensors(path: Path, files: list[Path], auto, *, trust_remote_code: bool) -> None:
    """Before any weight is loaded: the files' tensors (headers only) against the model config.json
    builds on the ``meta`` device. Refuses (one line naming the file and the first bad tensor) a
    parameter the files lack (tied ones aside), a tensor the model has no place for, a shape that
    differs, and a model with more parameter elements than the files hold, so the memory a load
    takes follows the files, not config.json."""
    import re

    tensors = _file_tensors(files)
    where = files[0]
    try:  # cheap before building anything: every layer needs at least one tensor
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
        layers = getattr(cfg, "num_hidden_layers", None)
    except Exception:  # noqa: BLE001  (judged by the full load below)
        layers = None
    if isinstance(layers, int) and layers > len(tensors):
        raise KdataError(f"{where}: config.json asks for {layers} layers, but the weights hold only "
                         f"{len(tensors)} tensor(s)")
    try:
        cfg, meta = _meta_model(path, auto, trust_remote_code=trust_remote_code)
    except FATAL:
        raise
    except BaseException as exc:  # noqa: BLE001
        msg = str(exc).strip().splitlines()
        raise KdataError(f"{path}: cannot build the model from config.json ({type(exc).__name__}: "
                         f"{msg[0][:200] if msg else ''})") from None
    params = dict(meta.named_parameters())  # tied duplicates removed: what the files must hold
    every = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    every.update({k: tuple(v.shape) for k, v in meta.named_parameters(remove_duplicate=False)})
    need = sum(v.numel() for v in params.values())
    have = sum(int(torch.Size(s).numel()) for s, _ in tensors.values())
    if need > have:
        raise KdataError(f"{where}: config.json describes {need:,} parameter values, but the weights hold only "
                         f"{have:,}")
    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping

        renamed = bool(get_checkpoint_conversion_mapping(getattr(cfg, "model_type", None)))
    except Exception:  # noqa: BLE001
        renamed = False
    if renamed:  # checkpoint names are converted on load: the size bound above and the load's own report apply
        return
    prefix = getattr(meta, "base_model_prefix", "") or ""
    ignore = [re.compile(p) for p in (getattr(meta, "_keys_to_ignore_on_load_unexpected", None) or [])]

    def model_name(k: str) -> str | None:
        cands = [k, k.replace(".gamma", ".weight").replace(".beta", ".bias")]
        for c in list(cands):
            if prefix:
                cands += [f"{prefix}.{c}", c[len(prefix) + 1:] if c.startswith(prefix + ".") else c]
        return next((c for c in cands if c in every), None)

    seen = set()
    for k, (shape, f) in tensors.items():
        name = model_name(k)
        if name is None:
            if any(p.search(k) for p in ignore):
                continue
            raise KdataError(f"{f}: tensor '{k}' is not a parameter of the model config.json describes")
        if shape != every[name]:
            raise KdataError(f"{f}: tensor '{k}' has shape {list(shape)}, the model expects {list(every[name])}")
        seen.add(name)
    missing = [k for k in params if k not in seen]
    if missing:
        raise KdataError(f"{where}: weights lack {len(missing)} parameter(s) of the model, e.g. '{missing[0]}'")
