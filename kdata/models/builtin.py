"""Built-in models ``builtin:digits-teacher`` and ``builtin:digits-student``.

Their weights ship inside the package (``kdata/models/builtin_weights/*.safetensors``, with their
sha256 and provenance in ``weights.json``), so first use loads ~400 KB and trains nothing, and
every machine gets the same weights and the same predictions. The files are tensors only
(safetensors: no pickle, no code runs on load) and are checked against ``weights.json`` before
use; a model's manifest checksum is its file's sha256.

Both were trained on the clean ``train`` split of scikit-learn's digits (disjoint from the pool
and the test split). The teacher is a small CNN (~94k parameters, ~97% test accuracy); the
student a much smaller one (~3.8k parameters, ~83%) that has seen only 150 clean images, so there
is something to distil.

Retraining stays available:

* ``KDATA_BUILTIN_RETRAIN=1``: train both models on first use (about 25 s of CPU; the recipe is
  ``kdata.models.digits_net``) into ``$KDATA_CACHE/models/*-retrained-v1.safetensors`` and use
  those instead of the shipped files;
* ``python -m kdata.models.builtin --retrain --write-package-weights``: regenerate the shipped
  files and ``weights.json`` (same seeds, one intra-op thread: the same torch build on the same
  CPU family reproduces them byte for byte; ``--check`` retrains and only compares);
* ``python -m kdata.models.builtin``: print the test accuracy and checksum of each model.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from kdata.core.digests import sha256_file_memo
from kdata.core.errors import KdataError
from kdata.core.paths import cache_dir
from kdata.models.base import Model, register_loader
from kdata.models.digits_net import (  # noqa: F401  (DigitsNet, MODEL_VERSION… re-exported)
    INPUT_SIZE, MEAN, MODEL_VERSION, SPECS, STD, THREADS, DigitsNet, normalise, save_weights, train_builtin)
from kdata.models.sidecar import first_line
from kdata.pools import builtin

RETRAIN_ENV = "KDATA_BUILTIN_RETRAIN"
WEIGHTS_DIR = "builtin_weights"
METADATA_FILE = "weights.json"
COMMAND = "python -m kdata.models.builtin --retrain --write-package-weights"


def sidecar(name: str) -> dict:
    return {"input_size": list(INPUT_SIZE), "mean": list(MEAN), "std": list(STD),
            "interpolation": "bilinear", "class_names": builtin.CLASS_NAMES,
            "arch": {"widths": list(SPECS[name]["widths"])}}


# ------------------------------------------------------------------------------------------------
# Where the weights come from: the package (default) or a retrained copy in the cache


def package_weights_dir() -> Path:
    """The folder of the shipped weights (a real directory: the package is installed unzipped)."""
    return Path(str(resources.files("kdata.models").joinpath(WEIGHTS_DIR)))


def shipped_metadata() -> dict:
    """``weights.json``: per model its file, sha256, size, architecture and recorded test accuracy."""
    path = package_weights_dir() / METADATA_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise KdataError(f"{path}: cannot read the built-in models' metadata ({first_line(exc)}); "
                         "reinstall kdata") from None


def retrain_requested() -> bool:
    return os.environ.get(RETRAIN_ENV, "").strip().lower() not in ("", "0", "false", "no")


def shipped_checkpoint(name: str) -> Path:
    """The shipped safetensors file of a built-in model, after checking its sha256 against ``weights.json``."""
    entry = shipped_metadata().get("models", {}).get(name)
    if not isinstance(entry, dict) or not {"file", "sha256"} <= set(entry):
        raise KdataError(f"{package_weights_dir() / METADATA_FILE}: no entry for {name}; reinstall kdata")
    path = package_weights_dir() / entry["file"]
    if not path.is_file():
        raise KdataError(f"{path}: the built-in weights are missing; reinstall kdata or set {RETRAIN_ENV}=1")
    digest = sha256_file_memo(path)
    if digest != entry["sha256"]:
        raise KdataError(f"{path}: sha256 {digest[:12]}… differs from {METADATA_FILE} ({entry['sha256'][:12]}…); "
                         f"reinstall kdata or set {RETRAIN_ENV}=1")
    return path


def retrained_checkpoint(name: str) -> Path:
    """A copy trained on this machine on first use (``KDATA_BUILTIN_RETRAIN=1``), cached and reused."""
    path = cache_dir("models") / f"{name}-retrained-{MODEL_VERSION}.safetensors"
    if not path.exists():
        save_weights(train_builtin(name), path, name=name)
    return path


def builtin_checkpoint(name: str) -> str:
    """Path of the weights of a built-in model: the shipped file, or a retrained one on request."""
    return str(retrained_checkpoint(name) if retrain_requested() else shipped_checkpoint(name))


def load_digits_net(path: str | os.PathLike, widths, *, device) -> DigitsNet:
    """A DigitsNet from a safetensors file (tensors only: nothing in the file can run)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
        with torch.random.fork_rng(devices=[]):  # the random init is overwritten: leave the caller's RNG alone
            net = DigitsNet(tuple(widths))
        net.load_state_dict(state)
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:  # corrupt or foreign file: one line
        raise KdataError(f"{path}: cannot load the weights ({first_line(exc)})", exit_code=2) from None
    return net.to(device).eval()


def model_from_net(net: DigitsNet, *, spec: str, checksum: str, class_names=None) -> Model:
    def fwd(x):
        f = net.features(x)
        return net.head(f), f

    return Model(spec=spec, module=net, input_size=INPUT_SIZE, mean=MEAN, std=STD,
                 class_names=list(class_names or builtin.CLASS_NAMES), checksum=checksum, forward_fn=fwd)


@register_loader(lambda s: s.startswith("builtin:"))
def load_builtin(spec: str, *, device="cpu") -> Model:
    """``builtin:digits-teacher`` / ``builtin:digits-student`` (shipped weights; see the module docstring)."""
    name = spec.split(":", 1)[1]
    if name not in SPECS:
        raise KdataError(f"unknown built-in model '{spec}' (builtin:digits-teacher, builtin:digits-student)")
    path = builtin_checkpoint(name)
    net = load_digits_net(path, SPECS[name]["widths"], device=device)
    return model_from_net(net, spec=spec, checksum="sha256:" + sha256_file_memo(path))


def accuracy(model: Model, images_uint8: np.ndarray, labels: np.ndarray) -> float:
    with torch.inference_mode():
        x = normalise(torch.from_numpy(images_uint8).unsqueeze(1))
        logits, _ = model.forward(x)
    return float((logits.argmax(1).numpy() == labels).mean())


# ------------------------------------------------------------------------------------------------
# The script that regenerates the shipped files


def write_package_weights(out_dir: Path | None = None) -> dict:
    """Retrain both models and write them and ``weights.json`` into ``out_dir`` (default: the package)."""
    import platform
    import time

    from kdata.core.atomic import write_json

    out_dir = Path(out_dir) if out_dir is not None else package_weights_dir()
    test_x, test_y = builtin.split_arrays("test")
    models = {}
    for name, cfg in SPECS.items():
        t0 = time.perf_counter()
        net = train_builtin(name)
        seconds = time.perf_counter() - t0
        path = out_dir / f"{name}.safetensors"
        save_weights(net, path, name=name)
        digest = sha256_file_memo(path)
        m = model_from_net(load_digits_net(path, cfg["widths"], device="cpu"), spec=f"builtin:{name}",
                           checksum="sha256:" + digest)
        models[name] = {"file": path.name, "sha256": digest, "bytes": path.stat().st_size,
                        "params": sum(p.numel() for p in net.parameters()),
                        "test_accuracy": round(accuracy(m, test_x, test_y), 4),
                        "train": {"split": cfg["split"], "epochs": cfg["epochs"], "seed": cfg["seed"]},
                        **sidecar(name)}
        print(f"{name}: test accuracy {models[name]['test_accuracy']:.4f}, sha256 {digest[:16]}…, "
              f"trained in {seconds:.1f}s", flush=True)
    meta = {"format": 1, "version": MODEL_VERSION, "produced_by": COMMAND, "threads": THREADS,
            "torch": torch.__version__, "machine": platform.machine(), "models": models}
    write_json(out_dir / METADATA_FILE, meta)
    return meta


def main(argv: list[str]) -> int:
    """``python -m kdata.models.builtin [--retrain (--write-package-weights | --check)]``."""
    import argparse
    import tempfile

    p = argparse.ArgumentParser(prog="python -m kdata.models.builtin",
                                description="The built-in digits models: report them, or retrain them and "
                                            "regenerate (or check) the shipped weights.")
    p.add_argument("--retrain", action="store_true", help="train both models from scratch (seeded, one thread)")
    p.add_argument("--write-package-weights", action="store_true",
                   help="with --retrain: overwrite kdata/models/builtin_weights/ and weights.json")
    p.add_argument("--check", action="store_true",
                   help="with --retrain: only say whether the retrained files match the shipped sha256")
    args = p.parse_args(argv)
    if not args.retrain:
        test_x, test_y = builtin.split_arrays("test")
        for name in SPECS:
            m = load_builtin(f"builtin:{name}")
            print(f"{name}: test accuracy {accuracy(m, test_x, test_y):.4f}  {m.checksum}")
        return 0
    if args.write_package_weights == args.check:
        p.error("--retrain needs exactly one of --write-package-weights and --check")
    if args.write_package_weights:
        write_package_weights()
        print(f"wrote {package_weights_dir()}")
        return 0
    shipped = shipped_metadata()["models"]
    with tempfile.TemporaryDirectory(prefix="kdata-builtin-check-") as tmp:
        models = write_package_weights(Path(tmp))["models"]
    match = {n: shipped.get(n, {}).get("sha256") == models[n]["sha256"] for n in models}
    print(json.dumps(match))
    return 0 if all(match.values()) else 1


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
