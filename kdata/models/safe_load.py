"""Load model files so that nothing in them can run code, whatever torch does inside.

Two layers, both always on:

1. **Inspect first** (:mod:`kdata.models.archive_check`, :mod:`kdata.models.pickle_scan`): the
   file is read as a zip and as pickle opcodes, nothing executed, and refused with one line when
   a pickle names anything but tensor-rebuilding globals, a member sits where torch would load
   compiled code, or the graph names a callable or expression outside a small allowlist.
2. **Guard the call** (:func:`untrusted_load`): while torch reads the file on this thread,
   ``torch.load`` is forced to ``weights_only=True`` (torch.export retries with
   ``weights_only=False``; the retry then fails too), and a Python audit hook (PEP 578) refuses
   every ``pickle.find_class`` outside the weights allowlist and every attempt to start a
   process, load a shared library through ctypes or open a socket. A refusal recorded by the
   hook fails the load even when torch swallows the exception it raised.

torch's own log records and warnings are silenced during the call, so a damaged file gives
kdata's one line and no traceback from torch's logger before it.

One load at a time per process (``LOAD_LOCK``, re-entrant): ``torch.export.load`` keeps its
deserialiser in a module global (a second thread's load fails with "_CURRENT_DESERIALIZER is
already set"), and the logger levels and the ``warnings`` filters silenced around a load are
process-wide, so two overlapping loads would restore each other's silenced state and leave the
process's warnings ignored. Holding the lock over the whole guarded block (silencing, deserialising,
the probe, restoring) keeps concurrent loads from threads correct and leaves the caller's logging
and warnings as they were.

Deserialisation runs on the CPU (``map_location="cpu"``); callers move the module to the
device afterwards, outside the guard.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import threading
import warnings
from pathlib import Path

import torch

from kdata.core.errors import KdataError, printable
from kdata.models.archive_check import check_pt2_archive, check_torchscript_archive
from kdata.models.pickle_scan import NAME_LIMIT, check_checkpoint_file, weights_global_ok

# Audit events (https://docs.python.org/3/library/audit_events.html) that loading weights never needs.
BLOCKED_EVENTS = frozenset({
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.startfile",
    "subprocess.Popen", "pty.spawn", "ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle",
    "ctypes.call_function", "socket.connect", "socket.bind", "socket.sendto", "urllib.Request",
    "webbrowser.open",
})  # not os.kill: the garbage collector may stop an old DataLoader's workers during a load

_ACTIVE: contextvars.ContextVar[list | None] = contextvars.ContextVar("kdata_untrusted_load", default=None)
_LOCK = threading.Lock()
LOAD_LOCK = threading.RLock()  # one guarded load at a time (module docstring)
_STATE = {"hook": False, "depth": 0, "torch_load": None}


def _audit(event: str, args) -> None:
    refused = _ACTIVE.get()
    if refused is None:
        return
    if event == "pickle.find_class":
        module, name = str(args[0]), str(args[1])
        if weights_global_ok(module, name):
            return
        what = f"unpickle {printable(module, limit=NAME_LIMIT)}.{printable(name, limit=NAME_LIMIT)}"
    elif event in BLOCKED_EVENTS:
        what = f"{event} {printable(args[0], limit=60) if args else ''}".strip()
    else:
        return
    refused.append(what)
    raise PermissionError(f"kdata refused while loading a model file: {what}")


def _weights_only_load(*args, **kwargs):
    if _ACTIVE.get() is not None:
        kwargs["weights_only"] = True
    return _STATE["torch_load"](*args, **kwargs)


@contextlib.contextmanager
def _patched_torch_load():
    """Force ``weights_only=True`` on ``torch.load`` for guarded calls on this thread (other threads
    pass through unchanged); installed while any guarded call is running."""
    with _LOCK:
        if not _STATE["hook"]:
            sys.addaudithook(_audit)  # permanent by design; a no-op outside a guarded call
            _STATE["hook"] = True
        if _STATE["depth"] == 0:
            _STATE["torch_load"] = torch.load
            torch.load = torch.serialization.load = _weights_only_load
        _STATE["depth"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _STATE["depth"] -= 1
            if _STATE["depth"] == 0:
                torch.load = torch.serialization.load = _STATE["torch_load"]


@contextlib.contextmanager
def _quiet_torch_logs():
    """torch's loggers and all warnings silenced, restored after (under ``LOAD_LOCK``: both are
    process-wide, so overlapping save/restore pairs from two threads would leave them silenced)."""
    with LOAD_LOCK:
        known = list(logging.root.manager.loggerDict.items())
        loggers = [logging.getLogger("torch")] + [lg for n, lg in known
                                                  if n.startswith("torch.") and isinstance(lg, logging.Logger)]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.CRITICAL + 1)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


@contextlib.contextmanager
def untrusted_load(where: str):
    """Guard a block that deserialises a user's file (see the module docstring); raise KdataError
    naming ``where`` when anything in it tried to run code."""
    refused: list[str] = []
    with LOAD_LOCK:  # torch.export.load, logger levels and warnings filters are process-wide
        token = _ACTIVE.set(refused)
        try:
            with _patched_torch_load(), _quiet_torch_logs():
                yield
        except KdataError:
            raise
        except Exception:
            if refused:
                raise _refusal(where, refused) from None
            raise
        finally:
            _ACTIVE.reset(token)
    if refused:
        raise _refusal(where, refused)


def _refusal(where: str, refused: list[str]) -> KdataError:
    return KdataError(f"{where}: refused: loading it tried to {refused[0]} (kdata never runs code from a model file)")


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0][:200] if msg else ''}".rstrip(": ")


def load_state_file(path: str | Path, *, where: str | None = None) -> object:
    """``torch.load`` of a checkpoint that may hold only tensors (and dicts/lists of them)."""
    where = where or str(path)
    check_checkpoint_file(path, where=where)
    try:
        with untrusted_load(where):
            return torch.load(path, map_location="cpu", weights_only=True)
    except KdataError:
        raise
    except Exception as exc:
        raise KdataError(f"{where}: cannot read checkpoint ({_one_line(exc)})") from None


PROBE_SECONDS = 300.0  # a forward pass on zeros that runs longer: a model that loops (KDATA_PROBE_SECONDS)


def _guarded_probe(program, probe_shape, *, path) -> None:
    """Run one CPU forward pass inside the guard: code an archive would run on every forward pass
    (exported guards, TorchScript methods) runs here first, where the audit hook refuses it.
    Ordinary failures are left to the caller's own probe, which reports them. A pass that never ends
    (a ``while`` loop in the program) cannot be interrupted inside torch's interpreter: after
    ``PROBE_SECONDS`` the process prints one line naming the file and exits with status 2."""
    if probe_shape is None:
        return
    import os

    limit = float(os.environ.get("KDATA_PROBE_SECONDS") or PROBE_SECONDS)

    def stuck() -> None:
        print(f"kdata: error: {printable(path)}: a forward pass on zeros ran over {limit:g} s (a model that "
              "loops forever?); stopped", file=sys.stderr, flush=True)
        os._exit(2)

    watchdog = threading.Timer(limit, stuck)
    watchdog.daemon = True
    watchdog.start()
    try:
        with contextlib.suppress(Exception), torch.inference_mode():
            program(torch.zeros(probe_shape))
    finally:
        watchdog.cancel()


def load_exported_program(path: str | Path, *, probe_shape=None):
    """``torch.export.load(path).module()`` of a checked ``.pt2``, on the CPU; with ``probe_shape``
    also one forward pass on zeros of that shape, inside the guard."""
    path = Path(path)
    check_pt2_archive(path)
    try:
        with untrusted_load(str(path)):
            program = torch.export.load(str(path)).module()
            _guarded_probe(program, probe_shape, path=path)
            return program
    except KdataError:
        raise
    except Exception as exc:
        detail = _one_line(exc)
        if "warnings above" in detail:  # torch logged the cause, silenced here; say what it means
            detail = "a member is missing or damaged, or it was written by an incompatible torch"
        raise KdataError(f"{path}: cannot load as a torch.export archive ({detail})") from None


def load_torchscript_program(path: str | Path, *, probe_shape=None):
    """``torch.jit.load`` of a checked TorchScript archive, on the CPU, in eval mode (``probe_shape``:
    as for :func:`load_exported_program`)."""
    path = Path(path)
    check_torchscript_archive(path)
    try:
        with untrusted_load(str(path)):
            program = torch.jit.load(str(path), map_location="cpu")
            program.eval()
            _guarded_probe(program, probe_shape, path=path)
            return program
    except KdataError:
        raise
    except Exception as exc:
        raise KdataError(f"{path}: cannot load as a TorchScript archive ({_one_line(exc)})") from None
