"""Read a pickle's opcodes without running it: which globals would unpickling it call?

Pickle is a small stack machine; the only way it runs code is by looking up a global
(``GLOBAL``/``STACK_GLOBAL``/``INST``) and calling it (``REDUCE``/``BUILD``/``OBJ``/``NEWOBJ``).
``pickletools.genops`` decodes the opcodes without executing any; a light emulation of the
stack (each opcode's documented ``stack_before``/``stack_after``) recovers the module and name
``STACK_GLOBAL`` pops, whatever came between. A pickle is accepted only when every global it
names is on an allowlist of tensor-rebuilding functions, storage classes and dtypes: the set
a weights-only load needs. Anything else (``posix.system``, ``builtins.eval``, any class of
the user's) refuses the file before torch sees it.

A checkpoint in torch's zip format holds one pickle, ``<root>/data.pkl``, next to raw storage
bytes; the legacy (pre-1.6) format is five pickles in a row followed by raw bytes.
"""

from __future__ import annotations

import io
import pickletools
import re
import zipfile
from typing import IO, Iterable

import torch

from kdata.core.errors import KdataError, printable

# (module, name) pairs a weights-only load of a torch checkpoint may reference.
_TORCH_REBUILD = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                  "_rebuild_parameter_with_state", "_rebuild_qtensor", "_rebuild_sparse_tensor",
                  "_rebuild_meta_tensor_no_storage")
WEIGHTS_GLOBALS = frozenset({
    ("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"), ("_codecs", "encode"),
    ("torch", "Size"), ("torch", "device"), ("torch", "Tensor"), ("torch.nn.parameter", "Parameter"),
    ("torch.serialization", "_get_layout"), ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch.storage", "UntypedStorage"), ("torch.storage", "TypedStorage"),
    *(("torch._utils", n) for n in _TORCH_REBUILD),
})
_TORCH_VALUE_TYPES = (torch.dtype, torch.layout, torch.memory_format, torch.qscheme)
_PUBLIC_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_STRING_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE",
               "BINUNICODE8"}
_MARK = object()
_DATA_PKL = re.compile(r"([^/]+/)?data\.pkl\Z")
NAME_LIMIT = 80  # characters of a name from a hostile file that an error line shows
MAX_OPCODES = 5_000_000  # per file, all its pickles together: a state dict of 100k tensors needs ~2M
MAX_PICKLE_BYTES = 64 << 20  # uncompressed size of one pickle member (torch.save's data.pkl: ~100 B a tensor)


class BoundedReader(io.RawIOBase):
    """A raw stream over ``inner`` that refuses (ValueError) to yield more than ``limit`` bytes: a zip
    member whose header lies about its size cannot make a reader go past its bound. Wrap it in an
    ``io.BufferedReader``: the opcode scan reads one byte at a time."""

    def __init__(self, inner: IO[bytes], limit: int):
        self._inner, self._limit, self._pos = inner, limit, 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer) -> int:
        want = min(len(buffer), self._limit + 1 - self._pos)
        if want <= 0:
            raise ValueError(f"member longer than its {self._limit}-byte bound")
        data = self._inner.read(want)
        if self._pos + len(data) > self._limit:
            raise ValueError(f"member longer than its {self._limit}-byte bound")
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)


def bounded(inner: IO[bytes], limit: int) -> io.BufferedReader:
    """``inner`` behind :class:`BoundedReader` and a read buffer."""
    return io.BufferedReader(BoundedReader(inner, limit), 1 << 16)


class OpcodeBudget:
    """Opcodes left to scan in one file, shared by all its pickles."""

    def __init__(self, total: int = MAX_OPCODES):
        self.left = total


def weights_global_ok(module: str, name: str) -> bool:
    """True for the globals a weights-only torch checkpoint may name (no others)."""
    if module == "__builtin__":  # protocol-2 pickles (torch.save's default) spell builtins the Python 2 way
        module = "builtins"
    if (module, name) in WEIGHTS_GLOBALS:
        return True
    if module != "torch" or not _PUBLIC_NAME.match(name):
        return False
    value = getattr(torch, name, None)  # public attribute of torch: no lazy import is triggered
    if isinstance(value, _TORCH_VALUE_TYPES):
        return True
    return name.endswith("Storage") and isinstance(value, type)


def torchscript_global_ok(module: str, name: str) -> bool:
    """TorchScript's own unpickler resolves ``__torch__.*`` classes (compiled from the archive's
    TorchScript code, never Python) and ``torch.jit._pickle`` helpers; nothing else beyond weights."""
    if module == "__torch__" or module.startswith("__torch__."):
        return "__" not in name
    if module == "torch.jit._pickle":
        return bool(_PUBLIC_NAME.match(name))
    return (module, name) in (("builtins", "complex"), ("__builtin__", "complex")) or weights_global_ok(module, name)


def pickle_globals(stream: IO[bytes], budget: OpcodeBudget | None = None) -> list[tuple[str, str]]:
    """The (module, name) globals one pickle (read up to its STOP) references; ValueError if the
    bytes are not a well-formed pickle, hide a global's name where it cannot be read, or hold more
    opcodes than ``budget`` (shared by a file's pickles; default: :data:`MAX_OPCODES`) has left."""
    budget = budget if budget is not None else OpcodeBudget()
    stack: list = []
    memo: dict = {}
    found: list[tuple[str, str]] = []

    def pop():
        if not stack:
            raise ValueError("stack underflow")
        return stack.pop()

    limit = budget.left
    count = 0
    for count, (op, arg, _pos) in enumerate(pickletools.genops(stream), 1):
        if count > limit:
            raise ValueError(f"more than {MAX_OPCODES} opcodes in one file")
        name = op.name
        if name in _STRING_OPS:
            stack.append(arg)
        elif name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            found.append((module, attr))
            if name == "INST":
                while stack and stack[-1] is not _MARK:
                    stack.pop()
                pop()
            stack.append(None)
        elif name == "STACK_GLOBAL":
            attr, module = pop(), pop()
            if not isinstance(attr, str) or not isinstance(module, str):
                raise ValueError("a global whose name is computed")
            found.append((module, attr))
            stack.append(None)
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1] if stack else None
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1] if stack else None
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if arg not in memo:
                raise ValueError(f"memo key {arg} read before it is written")
            stack.append(memo[arg])
        elif name == "DUP":
            stack.append(stack[-1] if stack else None)
        elif name.startswith("EXT"):
            raise ValueError("a global named through the copyreg extension registry")
        else:
            _apply_stack_effect(stack, op, pop)
    budget.left = limit - count
    return found


def _apply_stack_effect(stack: list, op, pop) -> None:
    before = op.stack_before
    if pickletools.markobject in before:  # pop to the mark, then what lies below it
        while stack and stack[-1] is not _MARK:
            stack.pop()
        pop()
        for _ in range(before.index(pickletools.markobject)):
            pop()
    else:
        for _ in before:
            pop()
    for item in op.stack_after:
        stack.append(_MARK if item is pickletools.markobject else None)


def check_pickle(stream: IO[bytes], *, where: str, allowed=weights_global_ok,
                 budget: OpcodeBudget | None = None) -> None:
    """Refuse (one line naming ``where``) a pickle that is malformed or names a global not allowed."""
    try:
        names = pickle_globals(stream, budget)
    except Exception as exc:  # noqa: BLE001  any decoding failure is a refusal
        raise KdataError(f"{where}: not a readable pickle ({type(exc).__name__}: {str(exc)[:120]})") from None
    for module, name in names:
        if not allowed(module, name):
            call = f"{printable(module, limit=NAME_LIMIT)}.{printable(name, limit=NAME_LIMIT)}"
            raise KdataError(f"{where}: refused: loading it would call {call} "
                             "(kdata loads only tensors and never runs code from a model file)")


def _zip_members(zf: zipfile.ZipFile) -> Iterable[zipfile.ZipInfo]:
    return (i for i in zf.infolist() if not i.is_dir())


def check_torch_payload(data: IO[bytes], *, where: str, allowed=weights_global_ok,
                        budget: OpcodeBudget | None = None) -> None:
    """Check a ``torch.save`` payload (zip format: its ``<root>/data.pkl``, the one pickle torch.load
    reads; legacy: its five leading pickles) without unpickling anything; raise KdataError on
    anything not allowed. Other ``*.pkl`` members (torch.save writes none) are refused, and all
    pickles of a file share one opcode budget."""
    data.seek(0)
    head = data.read(4)
    data.seek(0)
    budget = budget if budget is not None else OpcodeBudget()
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(data) as zf:
                pickles = [i for i in _zip_members(zf) if i.filename.endswith(".pkl")]
                for info in pickles:
                    if not _DATA_PKL.match(info.filename):
                        member = printable(info.filename, limit=NAME_LIMIT)
                        raise KdataError(f"{where}: refused: unexpected pickle member {member!r} "
                                         "(torch.save writes only <root>/data.pkl)")
                if not pickles:
                    raise KdataError(f"{where}: cannot read checkpoint (a zip file without data.pkl)")
                for info in pickles:
                    shown = printable(info.filename, limit=NAME_LIMIT)
                    if info.file_size > MAX_PICKLE_BYTES:
                        raise KdataError(f"{where}: refused: {shown} declares "
                                         f"{info.file_size >> 20} MiB, over the {MAX_PICKLE_BYTES >> 20} MiB cap")
                    with zf.open(info) as member:
                        check_pickle(bounded(member, info.file_size), where=f"{where}: {shown}",
                                     allowed=allowed, budget=budget)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
            raise KdataError(f"{where}: cannot read checkpoint: damaged zip archive ({type(exc).__name__}: "
                             f"{str(exc)[:120]})") from None
        return
    if not head.startswith(b"\x80"):
        raise KdataError(f"{where}: cannot read checkpoint (neither torch's zip format nor a pickle)")
    for _ in range(5):  # legacy format: magic number, protocol, sys info, the object, storage keys
        if data.read(1) != b"\x80":
            break
        data.seek(-1, io.SEEK_CUR)
        check_pickle(data, where=where, allowed=allowed, budget=budget)


def check_checkpoint_file(path, *, where: str | None = None) -> None:
    """Check a checkpoint file on disk (``torch.save`` output) before torch reads it."""
    where = where or str(path)
    try:
        with open(path, "rb") as f:
            check_torch_payload(f, where=where)
    except OSError as exc:
        raise KdataError(f"{where}: cannot read checkpoint ({exc.strerror or type(exc).__name__})") from None
