"""Resume a killed training run: the state after each finished epoch, written atomically into ``OUT/.resume/``.

A rerun of the same command finds the newest state and goes on from the next epoch; the student it
ends with is byte-identical to an uninterrupted run's on CPU (the weights, the optimiser and its
learning-rate schedule, the random generators the epochs and the jitter draw from, the epoch log and
the best weights so far are all restored). The state is keyed by a hash of everything that decides the
result (``run_key``): the shards (manifest and shard files), the student's starting weights, the
training configuration, the eval set, the device, the library versions and what the caller adds (the
re-selection pool and teacher). A state under another key is dropped with one note and the run starts
afresh, so a rerun with other data or settings never continues a foreign run.

Each state is one ``torch.save`` of plain containers and tensors (``epoch-NNNN.pt``), read back with
``weights_only=True``: nothing but tensors and plain values is ever unpickled. The state of epoch k
replaces that of epoch k − 1 only once it is complete on disk (``kdata.core.atomic``); the caller
removes the directory once the student is saved (``Checkpoints.clear``). The caller holds OUT's
lock (``kdata.core.lock``) for the run, so two runs never write one OUT's states.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from kdata.core.atomic import atomic_path, sha256_file
from kdata.core.version import __version__
from kdata.core.warn import warn
from kdata.dataset.manifest import MANIFEST
from kdata.training.weights import cpu_state

RESUME_DIR = ".resume"
FORMAT = 1


def weights_checksum(module: torch.nn.Module) -> str:
    """A checksum of a module's parameters and buffers (names, dtypes, shapes, bytes): the score cache
    key of a student mid-training, and the starting weights in a run's resume key."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return "weights-sha256:" + h.hexdigest()


def shards_fingerprint(files, root: Path | None) -> str:
    """The shards a run trains on: the sha256 of their manifest (which lists every shard's sha256) and
    each file's path, size and modification time (a file rewritten in place is another dataset)."""
    h = hashlib.sha256()
    if root is not None and (Path(root) / MANIFEST).is_file():
        h.update(sha256_file(Path(root) / MANIFEST).encode())
    for f in files:
        st = Path(f).stat()
        h.update(f"{Path(f).resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def run_key(parts: dict, device: torch.device) -> str:
    """The hash a run's states are kept under: ``parts`` (see the module doc), the device (CUDA trains in
    bf16 autocast: its name counts) and the versions of kdata and torch."""
    where = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    text = json.dumps({**parts, **where, "kdata": __version__, "torch": torch.__version__, "format": FORMAT},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@contextmanager
def seeded_rng(seed: int, device: torch.device):
    """torch's global RNG seeded with ``seed`` for training (as ``torch.manual_seed`` did: the CPU
    generator, and every CUDA one on a CUDA run) and the caller's state restored afterwards, so a
    library call to ``train`` leaves the caller's random stream where it was. A CPU run does not
    touch CUDA (``torch.manual_seed`` would queue a lazy seed of every CUDA generator)."""
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else []):
        torch.random.default_generator.manual_seed(int(seed))
        if cuda:
            torch.cuda.manual_seed_all(int(seed))
        yield


def rng_state(device: torch.device) -> dict:
    """The global random generators (torch CPU and CUDA, numpy, python) as tensors and plain values."""
    kind, keys, pos, gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(gauss), float(cached)],
            "python": random.getstate()}


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


@contextmanager
def kept_rng(device: torch.device):
    """Run the block without moving the global random generators (``rng_state``): a KD³ re-selection
    scores the pool in the middle of training, and whether its scores come from the cache or not must
    not change the random stream training goes on with (nor, after a resume, the student)."""
    state = rng_state(device)
    try:
        yield
    finally:
        set_rng_state(state, device)


class Checkpoints:
    """The resumable states of the run writing into ``out`` (``out/.resume/epoch-NNNN.pt``).

    ``open(parts, device)`` fixes the run's key and returns the newest state saved under it (None: start
    afresh); ``save(state)`` writes one after an epoch; ``clear()`` removes them once the student is saved.
    ``on_start(epoch)`` is told where the run starts (0, or the epoch it resumes after), before any work,
    so the caller can drop what a killed run made after its last state (re-selections). ``request``
    (``request_digest``) is recorded beside the first state saved (``resumes``)."""

    def __init__(self, out: str | Path, *, extra: dict | None = None, on_start=None, request: str | None = None):
        self.dir = Path(out) / RESUME_DIR
        self.extra, self.on_start, self.key, self.request = dict(extra or {}), on_start, None, request

    def files(self) -> list[Path]:
        return sorted(self.dir.glob("epoch-*.pt")) if self.dir.is_dir() else []

    def open(self, parts: dict, device: torch.device) -> dict | None:
        self.key = run_key({**parts, **self.extra}, device)
        state, why = None, None
        for path in reversed(self.files()):
            try:
                got = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - any unreadable state is one note and a fresh start
                why = why or f"{path}: unreadable ({type(exc).__name__})"
                continue
            if not isinstance(got, dict) or got.get("format") != FORMAT or got.get("key") != self.key:
                why = why or (f"{path}: saved by a run with other data, student or settings")
                continue
            state = {**got, "path": str(path)}
            break
        if state is None and why:
            warn(f"{why}; not resuming from it, training from the start", note=True)
            self.clear()
        if self.on_start is not None:
            self.on_start(state["epoch"] if state else 0)
        return state

    def announce(self, state: dict, *, epochs: int) -> None:
        print(f"kdata: resuming from epoch {state['epoch']}/{epochs} ({state['path']})", file=sys.stderr)

    def save(self, state: dict) -> None:
        if self.request is not None:  # once, beside the first state (a state cleared after open: again)
            if not (self.dir / REQUEST_FILE).is_file():
                note_request(self.dir.parent, self.request)
        path = self.dir / f"epoch-{int(state['epoch']):04d}.pt"
        with atomic_path(path) as tmp:
            torch.save({"format": FORMAT, "key": self.key, **state}, tmp)
        for old in self.files():
            if old != path:
                old.unlink(missing_ok=True)

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def unfinished(out: str | Path) -> bool:
    """Whether ``out`` holds a run that was stopped before its student was saved in full: a resumable
    state and no ``train_log.json`` (the log is written last), so a rerun may go on into it."""
    return not (Path(out) / "train_log.json").exists() and bool(Checkpoints(out).files())


REQUEST_FILE = "request.json"  # in RESUME_DIR: which command the resumable states belong to


def request_digest(*, shards, config, **parts) -> str:
    """A digest of what a training run was asked to do — the dataset (its resolved path), the config
    dataclass's fields and the student, eval sets etc. in ``parts`` — for ``note_request``."""
    parts.update(shards=str(Path(shards).resolve()), config=dataclasses.asdict(config))
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def note_request(out: str | Path, request: str) -> None:
    """Record in ``out`` which request its resumable states will belong to (``resumes``)."""
    path = Path(out) / RESUME_DIR / REQUEST_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps({"request": request}))


def resumes(out: str | Path, request: str) -> bool:
    """Whether ``out`` holds an unfinished run of this very request: the same command run again goes on
    there, another command does not take it over (and clear its states)."""
    try:
        noted = json.loads((Path(out) / RESUME_DIR / REQUEST_FILE).read_text()).get("request")
    except (OSError, ValueError, AttributeError):
        return False
    return unfinished(out) and noted == request


def loop_state(*, net, opt, sched, schedule, gen, best, device, **loop) -> dict:
    """A training loop's state after an epoch: ``loop`` (epoch, done, history…) and every object's."""
    return {**loop, "model": cpu_state(net), "opt": opt.state_dict(), "sched": sched.state_dict(),
            "schedule": dict(vars(schedule)), "gen": gen.get_state(), "rng": rng_state(device),
            "best": None if best is None else {"epoch": best.epoch, "accuracy": best.value, "state": best.state}}


def restore_loop(state: dict, *, net, opt, sched, schedule, gen, best, device) -> None:
    """Load ``state`` (from ``loop_state``) into the loop's objects, in place."""
    net.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    vars(schedule).update(state["schedule"])
    sched.load_state_dict(state["sched"])
    gen.set_state(state["gen"])
    set_rng_state(state["rng"], device)
    if best is not None and state["best"] is not None:
        saved = state["best"]
        best.epoch, best.value, best.state = saved["epoch"], saved["accuracy"], saved["state"]
