"""Model files users bring: ``.pt2`` (torch.export), ``.pt`` (TorchScript), ``timm:ARCH:CHECKPOINT``
(and ``open_clip:ARCH:WEIGHTS``, in :mod:`kdata.models.clip`).

Exported models carry a sidecar ``<same stem>.json`` (:mod:`kdata.models.sidecar`). ``outputs``
is optional (default ``["logits"]``); ``class_names`` is optional when the pool knows its classes
(image folders), which then must match the model's output size.

No code runs from a model file: every file is inspected before torch opens it and loaded under a
guard that forces weights-only unpickling and refuses process starts (:mod:`kdata.models.safe_load`);
a file that would need more than tensors is refused with one line naming it.

``export_model`` writes a trained module as ``.pt2`` (or ``.pt``) plus sidecar; modules with a
``features``/``head`` split (like ``DigitsNet``) or timm's ``forward_features``/``forward_head``
are exported returning ``(logits, features)`` so the penultimate features survive the export.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from kdata.core.atomic import write_json
from kdata.core.digests import sha256_file_memo
from kdata.core.errors import KdataError
from kdata.core.extras import require
from kdata.models.base import Model, register_loader
from kdata.models.clip import (TEMPLATES, ZeroShotCLIP, class_text_embeddings, load_open_clip,
                               open_clip_model, parse_spec, preprocess_of)
from kdata.models.forward import (FrozenProgram, LogitsAndFeatures, channels_last, feature_mode, model_checksum,
                                  probe_outputs, split_outputs)
from kdata.models.safe_load import load_exported_program, load_state_file, load_torchscript_program
from kdata.models.sidecar import (INTERPOLATIONS, OUTPUTS, first_line, pool_class_names,
                                  read_sidecar, resolve_class_names, sidecar_path, validate_sidecar)

# Re-exported for callers that import them from here (pipeline, training, tests, benchmarks).
__all__ = ["INTERPOLATIONS", "OUTPUTS", "TEMPLATES", "ZeroShotCLIP", "class_text_embeddings", "export_model",
           "load_open_clip", "load_pt2", "load_timm", "load_torchscript", "open_clip_model", "pool_class_names",
           "preprocess_of", "probe_outputs", "read_sidecar", "sidecar_path", "validate_sidecar"]


# ------------------------------------------------------------------------------------------------
# .pt2 (torch.export) and .pt (TorchScript)

def _no_directory(path: Path, what: str, *, where: str | None = None) -> None:
    """One line for a directory given (or found) where ``what`` should be: "not found" would send the
    user looking for a file that is there."""
    if path.is_dir():
        raise KdataError(f"{where or path}: is a directory, not {what}")


def _file_model(spec: str, *, device, kind: str) -> Model:
    path = Path(spec)
    _no_directory(path, "a model file")
    if not path.is_file():
        raise KdataError(f"{spec}: model file not found")
    _no_directory(sidecar_path(path), f"a sidecar JSON file (the sidecar of {path.name})")
    cfg = read_sidecar(path)  # validated before the model file is touched
    device = torch.device(device)
    load = load_exported_program if kind == "pt2" else load_torchscript_program
    program = load(path, probe_shape=(2, *cfg["input_size"]))
    with contextlib.suppress(Exception):
        program = program.to(device)
    module = FrozenProgram(program)
    channels_last(module, device)
    with_feats = cfg["outputs"] == ["logits", "features"]

    def fwd(x):
        logits, feats = split_outputs(module(x))
        return logits, (feats if with_feats else None)

    n_out, fdim = probe_outputs(fwd, cfg["input_size"], device, where=spec)
    if with_feats and fdim is None:
        raise KdataError(f"{sidecar_path(path)}: field 'outputs' declares features but the model returns logits only")
    names = resolve_class_names(cfg.get("class_names"), n_out, where=spec)
    checksum = model_checksum(sha256_file_memo(path), cfg["_raw"], json.dumps(names))
    return Model(spec=spec, module=module, input_size=cfg["input_size"], mean=cfg["mean"], std=cfg["std"],
                 class_names=names, checksum=checksum, interpolation=cfg["interpolation"], forward_fn=fwd,
                 differentiable=True, extra={"format": kind, "feature_dim": fdim})  # HARD falls back if not


@register_loader(lambda s: s.endswith(".pt2") and not s.startswith(("open_clip:", "timm:")))
def load_pt2(spec: str, *, device="cpu") -> Model:
    return _file_model(spec, device=device, kind="pt2")


@register_loader(lambda s: s.endswith(".pt") and not s.startswith(("open_clip:", "timm:", "builtin:")))
def load_torchscript(spec: str, *, device="cpu") -> Model:
    return _file_model(spec, device=device, kind="pt")


@contextlib.contextmanager
def _atomic_same_suffix(path: Path):
    """Like ``atomic_path`` (ordinary permissions, fsynced, renamed into place), but the temporary file
    has the final file's very name, in a temporary directory beside it: torch.export.save checks the
    suffix, and both archive formats name their root folder after the file, so the same weights give
    the same bytes (a reproducible ``student_sha256``)."""
    import shutil
    import tempfile

    from kdata.core.atomic import current_umask, fsync_dir

    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent))
    tmp = work / path.name
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())  # ordinary permissions, as every finished file
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        shutil.rmtree(work, ignore_errors=True)


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
    mode = feature_mode(module)
    was_training = module.training
    device = next(iter(module.parameters()), torch.empty(0)).device
    module.eval()
    try:
        wrapped = LogitsAndFeatures(module, mode).eval() if mode else module
        x = torch.zeros((2, *sidecar["input_size"]), device=device)
        with torch.no_grad():
            logits, feats = split_outputs(wrapped(x))
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

def _load_state(path: str, *, spec: str) -> dict:
    _no_directory(Path(path), "a checkpoint file", where=f"{spec}: checkpoint {path}")
    if not Path(path).is_file():
        raise KdataError(f"{spec}: checkpoint {path} not found")
    state = load_state_file(path)
    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise KdataError(f"{spec}: checkpoint {path} is not a state dict of tensors")
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def _timm_default_cfg(arch: str) -> dict:
    import timm

    cfg = timm.models.get_pretrained_cfg(arch, allow_unregistered=True)
    if cfg is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(timm.create_model(arch, pretrained=False).pretrained_cfg)
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(vars(cfg))


def _timm_config(spec: str, arch: str, ckpt: str, cfg: dict | None, head_w) -> tuple[dict, int]:
    """(preprocessing config, number of classes) from the sidecar ``cfg``, else timm's defaults."""
    if cfg is None:
        default = _timm_default_cfg(arch)
        cfg = {"input_size": tuple(default.get("input_size", (3, 224, 224))),
               "mean": tuple(default.get("mean", (0.485, 0.456, 0.406))),
               "std": tuple(default.get("std", (0.229, 0.224, 0.225))),
               "interpolation": default.get("interpolation", "bilinear"), "_raw": b""}
        if cfg["interpolation"] not in INTERPOLATIONS:
            cfg["interpolation"] = "bilinear"
    num_classes = (len(cfg["class_names"]) if cfg.get("class_names") else
                   int(head_w.shape[0]) if head_w is not None else None)
    if num_classes is None:
        raise KdataError(f"{spec}: cannot tell the number of classes (no classifier weight in the checkpoint "
                         f"and no class_names in {sidecar_path(ckpt).name})")
    if head_w is not None and int(head_w.shape[0]) != num_classes:
        raise KdataError(f"{spec}: class-count mismatch: the checkpoint's classifier has {head_w.shape[0]} outputs "
                         f"but {sidecar_path(ckpt).name} lists {num_classes} class_names")
    return cfg, num_classes


# No image classifier kdata would score with has more classes than this: ImageNet-21k has 21,843 and
# the largest face-identity heads about a million. Past it the head alone (N x features) is gigabytes,
# so a class count read from a file is refused rather than allocated.
MAX_TIMM_CLASSES = 1_000_000


def _timm_shapes(arch: str, num_classes: int, in_chans: int) -> dict[str, tuple[int, ...]]:
    """Name -> shape of ``arch``'s state dict, built on the ``meta`` device (no memory for weights).
    An architecture that cannot be built there is built on the CPU: its size is then the named
    architecture's own (``num_classes`` has been checked against the checkpoint by then)."""
    import timm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                net = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans)
        except Exception:
            net = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _check_timm_state(spec: str, arch: str, ckpt: str, state: dict, head: str, num_classes: int,
                      in_chans: int) -> None:
    """Refuse, in one line naming the first bad tensor, a checkpoint whose tensors are not exactly what
    ``arch`` holds, before the model is built: a class count read from the file never becomes memory
    the file does not itself hold (a ``[N, 0]`` classifier costs nothing on disk)."""
    def bad(problem: str):
        return KdataError(f"{spec}: checkpoint {ckpt} does not fit {arch} ({problem})")

    head_w = state.get(f"{head}.weight")
    if head_w is not None:
        try:
            want = _timm_shapes(arch, 1, in_chans).get(f"{head}.weight")
        except Exception as exc:
            raise bad(first_line(exc)) from None
        if want is not None and (head_w.ndim != len(want) or tuple(head_w.shape[1:]) != want[1:]):
            raise bad(f"tensor '{head}.weight' has shape {tuple(head_w.shape)}, "
                      f"{arch} expects ({int(head_w.shape[0]) if head_w.ndim else 'N'}, "
                      f"{', '.join(map(str, want[1:]))})")
    if not 0 < num_classes <= MAX_TIMM_CLASSES:
        raise bad(f"{num_classes} classes; at most {MAX_TIMM_CLASSES:,} are accepted")
    try:
        expected = _timm_shapes(arch, num_classes, in_chans)
    except Exception as exc:
        raise bad(first_line(exc)) from None
    for name, tensor in state.items():
        if name not in expected:
            raise bad(f"unexpected tensor '{name}'")
        if tuple(tensor.shape) != expected[name]:
            raise bad(f"tensor '{name}' has shape {tuple(tensor.shape)}, {arch} expects {expected[name]}")
    missing = [name for name in expected if name not in state]
    if missing:
        raise bad(f"missing tensor '{missing[0]}'" + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))


@register_loader(lambda s: s.startswith("timm:"))
def load_timm(spec: str, *, device="cpu") -> Model:
    require("timm", "timm")
    import timm

    arch, ckpt = parse_spec(spec, "timm:", "CHECKPOINT")
    if not timm.is_model(arch):
        raise KdataError(f"{spec}: unknown timm architecture '{arch}'")
    _no_directory(sidecar_path(ckpt), f"a sidecar JSON file (the sidecar of {Path(ckpt).name})")
    sidecar = read_sidecar(ckpt, required=False)  # checked before the checkpoint is read
    state = _load_state(ckpt, spec=spec)
    classifier = _timm_default_cfg(arch).get("classifier", "head")
    classifier = classifier[0] if isinstance(classifier, (list, tuple)) else classifier
    head_w = state.get(f"{classifier}.weight")
    if head_w is not None and head_w.ndim == 0:
        raise KdataError(f"{spec}: checkpoint {ckpt} does not fit {arch} (tensor '{classifier}.weight' is a scalar)")
    cfg, num_classes = _timm_config(spec, arch, ckpt, sidecar, head_w)
    _check_timm_state(spec, arch, ckpt, state, classifier, num_classes, int(cfg["input_size"][0]))
    try:
        net = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=cfg["input_size"][0])
        net.load_state_dict(state, strict=True)
    except Exception as exc:
        raise KdataError(f"{spec}: checkpoint {ckpt} does not fit {arch} ({first_line(exc)})") from None
    device = torch.device(device)
    net = net.to(device).eval()
    channels_last(net, device)
    wrapped = LogitsAndFeatures(net, "timm")
    n_out, fdim = probe_outputs(wrapped, cfg["input_size"], device, where=spec)
    names = resolve_class_names(cfg.get("class_names"), n_out, where=spec)
    checksum = model_checksum(sha256_file_memo(ckpt), cfg["_raw"], arch, json.dumps(names))
    return Model(spec=spec, module=net, input_size=tuple(cfg["input_size"]), mean=tuple(cfg["mean"]),
                 std=tuple(cfg["std"]), class_names=names, checksum=checksum, interpolation=cfg["interpolation"],
                 forward_fn=wrapped, differentiable=True, extra={"format": "timm", "feature_dim": fdim})
