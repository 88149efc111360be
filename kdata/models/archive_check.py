"""Inspect ``.pt2`` and TorchScript archives before torch opens them.

torch's loaders run code from the file in more places than its pickles (torch 2.14.1):

- ``torch.export.load`` retries ``torch.load(weights_only=False)`` on an archive member whose
  weights-only load fails, unpickles pickled weights/constants with ``weights_only=False`` and
  ``opaque_obj_*`` constants with plain ``pickle.loads``, and dlopens AOTInductor libraries
  found under ``data/aotinductor/``;
- the graph (``models/<name>.json``) names each node's callable as a dotted path resolved with
  ``getattr`` from ``torch``/``operator``/``math`` (``torch.serialization.os.system`` resolves),
  parses symbolic sizes with ``sympy.sympify`` (``eval``) and ``exec``-s ``guards_code``;
- a TorchScript program may call ``torch.save``/``torch.from_file`` (files written or mapped) or
  ``print`` (checked on its tokens: :mod:`kdata.models.torchscript_code`).

So an archive is accepted only when every member sits where torch.export puts it, every pickled
member passes :mod:`kdata.models.pickle_scan`, every node target is an operator in an allowed
namespace, and every expression torch would ``eval``/``exec`` parses (with :mod:`ast`, nothing
run) to arithmetic over symbols, integers and a fixed set of sympy functions.
"""

from __future__ import annotations

import ast
import json
import re
import zipfile
from pathlib import Path

from kdata.core.errors import KdataError, printable
from kdata.models.pickle_scan import (MAX_PICKLE_BYTES, NAME_LIMIT, OpcodeBudget, bounded, check_pickle,
                                      check_torch_payload, torchscript_global_ok)
from kdata.models.torchscript_code import check_torchscript_code

# Where torch.export.save puts things, relative to the archive's root folder.
_PT2_LAYOUT = re.compile(r"(archive_format|archive_version|byteorder|\.data/[\w.]+|models/[\w.-]+\.json|"
                         r"data/(weights|constants|sample_inputs)/[\w.-]+|extra/[^/]+)\Z")
_OP_NAMESPACES = ("aten", "prims", "higher_order", "quantized", "quantized_decomposed", "torchvision")
_DENIED_OPS = {"save", "from_file", "load_tensor", "_print"}
_TARGET = re.compile(r"torch\.ops\.([A-Za-z_]\w*)\.([A-Za-z_]\w*)(\.[A-Za-z_]\w*)?\Z")
_OPERATOR = re.compile(r"_operator\.(getitem|add|sub|mul|truediv|floordiv|mod|pow|neg|pos|abs|eq|ne|lt|le|gt|ge|"
                       r"and_|or_|xor|not_|invert|lshift|rshift|matmul|index|truth)\Z")
_TORCH_SYM = re.compile(r"torch\.(_?sym_[a-z_]+|_assert|_check|_check_is_size)\Z|math\.[a-z][a-z0-9_]*\Z")
_SYMBOL = re.compile(r"[a-z]+[0-9]+\Z")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Size bounds, checked on every member's declared size before anything is read and enforced while
# reading (a lying header cannot pass them). torch.export.save stores every member uncompressed, so a
# .pt2 may hold no compressed member and its members together no more bytes than the file; json.loads
# makes ~20x the text in objects, so its JSON members are capped far below what that would cost.
# torch.jit.save deflates code/ and debug members (a few KB each): each may expand to at most
# MAX_TS_MEMBER, all of them to MAX_TS_EXPANDED.
MAX_GRAPH_JSON = 32 << 20
MAX_CONFIG_JSON = 32 << 20
MAX_SMALL_MEMBER = 64
MAX_TS_MEMBER = 32 << 20
MAX_TS_EXPANDED = 256 << 20
_ZIP_SLACK = 1 << 20


def _check_sizes(path: Path, zf: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], *, stored_only: bool) -> None:
    """Refuse, from the central directory alone, an archive whose members expand past the bounds."""
    try:
        disk = path.stat().st_size
    except OSError as exc:
        raise KdataError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    stored = expanded = 0
    for name, info in members.items():
        shown = printable(name, limit=NAME_LIMIT)
        if info.compress_type == zipfile.ZIP_STORED:
            if info.file_size != info.compress_size:
                raise KdataError(f"{path}: refused: member {shown!r} declares {info.file_size} bytes but "
                                 f"stores {info.compress_size} (a damaged or crafted archive)")
            stored += info.file_size
        elif stored_only:
            raise KdataError(f"{path}: refused: member {shown!r} is compressed (torch.export.save stores "
                             "every member uncompressed; a compressed one may be a zip bomb)")
        elif info.compress_type != zipfile.ZIP_DEFLATED:
            raise KdataError(f"{path}: refused: member {shown!r} uses a compression torch does not write")
        elif info.file_size > MAX_TS_MEMBER:
            raise KdataError(f"{path}: refused: compressed member {shown!r} expands to "
                             f"{info.file_size >> 20} MiB, over the {MAX_TS_MEMBER >> 20} MiB cap (a zip bomb?)")
        else:
            expanded += info.file_size
    if stored > disk + _ZIP_SLACK:
        raise KdataError(f"{path}: refused: members declare {stored >> 20} MiB of stored bytes in a "
                         f"{disk >> 20} MiB file (overlapping members: a zip bomb?)")
    if expanded > MAX_TS_EXPANDED:
        raise KdataError(f"{path}: refused: compressed members expand to {expanded >> 20} MiB in all, over the "
                         f"{MAX_TS_EXPANDED >> 20} MiB cap (a zip bomb?)")


def _read(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, limit: int) -> bytes:
    """A member's bytes, refused past ``limit`` whatever its header declares."""
    shown = printable(name, limit=NAME_LIMIT)
    if info.file_size > limit:
        raise KdataError(f"{path}: refused: {shown} is {info.file_size} bytes, over the {limit}-byte cap")
    try:
        with zf.open(info) as member:
            data = member.read(limit + 1)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise KdataError(f"{path}: cannot read member {shown!r} ({type(exc).__name__})") from None
    if len(data) > limit:
        raise KdataError(f"{path}: refused: {shown} is over the {limit}-byte cap")
    return data


def _open_zip(path: Path, what: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise KdataError(f"{path}: not a {what} (not a zip archive, or a truncated one)") from None
    except OSError as exc:
        raise KdataError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None


def _root_and_rel(path: Path, zf: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """Members keyed by their path below the single root folder every torch archive has."""
    infos = [i for i in zf.infolist() if not i.is_dir()]
    roots = {i.filename.split("/", 1)[0] for i in infos}
    if len(roots) != 1 or any("/" not in i.filename for i in infos):
        raise KdataError(f"{path}: not a torch archive (members must share one root folder)")
    rel: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename.split("/", 1)[1]
        if name in rel or ".." in name.split("/") or "\\" in name:
            raise KdataError(f"{path}: suspicious member name {info.filename!r}")
        rel[name] = info
    return rel


def check_pt2_archive(path: Path) -> None:
    """Refuse (one KdataError line) a ``.pt2`` that would make torch.export.load run code."""
    with _open_zip(path, "torch.export archive (.pt2)") as zf:
        members = _root_and_rel(path, zf)
        for name in members:
            if "aotinductor" in name:
                raise KdataError(f"{path}: refused: contains compiled AOTInductor code ({name}); kdata loads "
                                 "only exported graphs (torch.export.save)")
            if not _PT2_LAYOUT.match(name):
                raise KdataError(f"{path}: refused: unexpected member {name!r} (not written by torch.export.save)")
        _check_sizes(path, zf, members, stored_only=True)
        if ("archive_format" not in members
                or _read(path, zf, members["archive_format"], "archive_format", MAX_SMALL_MEMBER).strip() != b"pt2"):
            raise KdataError(f"{path}: not a torch.export archive of the current format (re-export it with "
                             "torch.export.save, torch ≥ 2.6)")
        raw: set[str] = set()
        pickled: set[str] = set()
        budget = OpcodeBudget()
        for name, info in members.items():
            if name.startswith(("data/weights/", "data/constants/")) and name.endswith("_config.json"):
                _payload_members(path, zf, info, name.rsplit("/", 1)[0], raw, pickled)
        for name, info in members.items():
            if name.startswith("models/"):
                _check_graph_json(path, zf, info, name)
            elif name.startswith("data/") and not name.endswith(".json") and (name not in raw or name in pickled):
                with zf.open(info) as member:  # a torch.save payload torch will torch.load
                    check_torch_payload(member, where=f"{path}: {name}", budget=budget)


def _payload_members(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, folder: str,
                     raw: set[str], pickled: set[str]) -> None:
    """Sort the members a payload config names into raw tensor bytes (read with frombuffer, never
    unpickled) and pickled ones; a member any config marks pickled is checked as a pickle."""
    try:
        for e in json.loads(_read(path, zf, info, info.filename, MAX_CONFIG_JSON))["config"].values():
            name = str(e["path_name"])
            if not re.fullmatch(r"[\w.-]+", name) or ".." in name:
                raise KdataError(f"{path}: refused: {info.filename} names member {name[:60]!r}")
            if name.startswith(("custom_obj", "opaque_obj")):
                raise KdataError(f"{path}: refused: constant {name!r} is a pickled Python/TorchBind object; "
                                 "kdata loads only tensors")
            (pickled if e.get("use_pickle", False) else raw).add(f"{folder}/{name}")
    except KdataError:
        raise
    except Exception as exc:  # noqa: BLE001  malformed config: refuse, never guess
        raise KdataError(f"{path}: malformed {info.filename} ({type(exc).__name__})") from None


def _check_graph_json(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> None:
    text = _read(path, zf, info, name, MAX_GRAPH_JSON)
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise KdataError(f"{path}: {name} is not valid JSON ({type(exc).__name__})") from None
    where = f"{path}: {name}"
    guards = doc.get("guards_code", []) if isinstance(doc, dict) else []
    if not isinstance(guards, list):
        raise KdataError(f"{where}: guards_code must be a list")
    for g in guards:
        _check_expression(g, where=f"{where}: guard", guard=True)
    stack = [doc]
    while stack:  # iterative walk: a deeply nested document cannot exhaust the Python stack
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("target", "as_operator") and isinstance(value, str):
                    _check_target(value, where=where)
                elif key == "expr_str":
                    _check_expression(value, where=f"{where}: symbolic size", guard=False)
                elif isinstance(value, (dict, list)):
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, (dict, list)))


def _check_target(target: str, *, where: str) -> None:
    m = _TARGET.match(target)
    ok = (m is not None and m.group(1) in _OP_NAMESPACES and m.group(2) not in _DENIED_OPS
          and "__" not in target) or _OPERATOR.match(target) or _TORCH_SYM.match(target)
    if not ok:
        raise KdataError(f"{where}: refused: graph calls {target[:80]!r}, not a tensor operator kdata allows")


# sympy names torch writes into symbolic sizes (Symbol('s0', positive=True, integer=True), FloorDiv(...)).
_SYMPY_CALLS = frozenset({
    "Symbol", "Integer", "Float", "Rational", "Add", "Mul", "Pow", "Max", "Min", "Abs", "Mod", "Eq", "Ne", "Lt",
    "Le", "Gt", "Ge", "And", "Or", "Not", "floor", "ceiling", "sqrt", "Piecewise", "FloorDiv", "ModularIndexing",
    "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural",
    "FloatPow", "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
    "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "OpaqueUnaryFn_sqrt", "BitwiseFn_bitwise_and",
    "BitwiseFn_bitwise_or", "BitwiseFn_bitwise_xor",
})
_SYMPY_CONSTANTS = frozenset({"oo", "zoo", "nan", "true", "false", "True", "False", "None", "inf"})
_GUARD_METHODS = frozenset({"size", "stride", "storage_offset", "dim", "numel"})
_MATH_NAMES = frozenset({"isnan", "isinf", "inf", "floor", "ceil", "sqrt", "trunc"})
_SAFE_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.operator, ast.unaryop,
               ast.boolop, ast.cmpop, ast.Load, ast.keyword)
MAX_EXPRESSION = 10_000


def _check_expression(text, *, where: str, guard: bool) -> None:
    """Parse an expression torch would eval (sympy) or exec (guards) and accept only arithmetic over
    symbols, small constants and known sympy functions (guards: ``L['x'].size()[0]`` and the like)."""
    if not isinstance(text, str) or len(text) > MAX_EXPRESSION or any(c in text for c in "\\#\n\r;\"{}@"):
        raise KdataError(f"{where}: refused: expression {str(text)[:60]!r} is not plain arithmetic")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise KdataError(f"{where}: refused: expression {text[:60]!r} does not parse") from None
    for node in ast.walk(tree):
        if not _expression_node_ok(node, guard=guard):
            raise KdataError(f"{where}: refused: expression {text[:60]!r} contains {type(node).__name__} "
                             f"{ast.unparse(node)[:40]!r}, not plain arithmetic")


def _expression_node_ok(node: ast.AST, *, guard: bool) -> bool:
    if isinstance(node, _SAFE_NODES):
        return not (isinstance(node, ast.keyword) and (node.arg is None or node.arg.startswith("_")))
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, str):
            return bool(_IDENT.match(v)) and "__" not in v
        return v is None or isinstance(v, (bool, float)) or (isinstance(v, int) and abs(v) < 1 << 63)
    if isinstance(node, ast.Name):
        if guard:
            return node.id in ("L", "math")
        return node.id in _SYMPY_CALLS or node.id in _SYMPY_CONSTANTS or bool(_SYMBOL.match(node.id))
    if isinstance(node, ast.Call):
        f = node.func
        if guard:
            return isinstance(f, ast.Attribute) and (f.attr in _GUARD_METHODS or f.attr in _MATH_NAMES)
        return isinstance(f, ast.Name) and f.id in _SYMPY_CALLS
    if isinstance(node, ast.Attribute):
        if not guard:
            return False
        if isinstance(node.value, ast.Name) and node.value.id == "math":
            return node.attr in _MATH_NAMES
        return node.attr in _GUARD_METHODS
    if isinstance(node, ast.Subscript):
        return guard and isinstance(node.slice, ast.Constant)
    return False


def check_torchscript_archive(path: Path) -> None:
    """Refuse a TorchScript ``.pt`` that is not one, carries a Python pickle, or calls file ops."""
    with _open_zip(path, "TorchScript archive") as zf:
        members = _root_and_rel(path, zf)
        if not any(n.startswith("code/") for n in members) or "data.pkl" not in members:
            raise KdataError(f"{path}: cannot load as a TorchScript archive: no code/ folder (a torch.save checkpoint? "
                             "load it as timm:ARCH:CHECKPOINT, or save the model with torch.jit.save)")
        _check_sizes(path, zf, members, stored_only=False)
        budget = OpcodeBudget()
        for name, info in members.items():
            shown = printable(name, limit=NAME_LIMIT)
            if name.endswith(("pkl", ".debug_pkl")):
                if info.file_size > MAX_PICKLE_BYTES:
                    raise KdataError(f"{path}: refused: {shown} is {info.file_size >> 20} MiB, over the "
                                     f"{MAX_PICKLE_BYTES >> 20} MiB cap")
                with zf.open(info) as member:
                    check_pickle(bounded(member, info.file_size), where=f"{path}: {shown}",
                                 allowed=torchscript_global_ok, budget=budget)
            elif name.startswith("code/") and name.endswith(".py"):
                check_torchscript_code(_read(path, zf, info, name, MAX_TS_MEMBER).decode("utf-8", "replace"),
                                       where=f"{path}: {shown}")
