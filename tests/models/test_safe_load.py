"""The pieces that keep code from running out of model files: the pickle scanner (checked against
what a real unpickler looks up), the expression checker for what torch would eval/exec, and legit
archives with symbolic shapes and guards still loading."""

from __future__ import annotations

import io
import json
import pickle
import zipfile

import pytest
import torch

from kdata.core.errors import KdataError
from kdata.models.archive_check import check_pt2_archive
from kdata.models.pickle_scan import check_pickle, pickle_globals, weights_global_ok
from kdata.models.safe_load import load_exported_program, load_state_file


def _u(s: str) -> bytes:  # SHORT_BINUNICODE
    b = s.encode()
    return b"\x8c" + bytes([len(b)]) + b


PROTO, STOP, POP, MEMOIZE, STACK_GLOBAL, EMPTY_TUPLE, REDUCE = b"\x80\x04", b".", b"0", b"\x94", b"\x93", b")", b"R"
CRAFTED = {
    # the names STACK_GLOBAL pops are not the last two strings pushed
    "popped_decoys": PROTO + _u("os") + _u("system") + _u("torch._utils") + _u("_rebuild_tensor_v2") + POP + POP
    + STACK_GLOBAL + POP + _u("x") + STOP,
    # names fetched back from the memo
    "memo": PROTO + _u("posix") + MEMOIZE + _u("collections") + MEMOIZE + POP + POP + b"h\x00" + _u("system")
    + STACK_GLOBAL + POP + _u("x") + STOP,
    # protocol-0 GLOBAL with the names inline
    "global_op": b"cbuiltins\neval\n" + POP + b"N" + STOP,
    "allowed": PROTO + _u("collections") + _u("OrderedDict") + STACK_GLOBAL + EMPTY_TUPLE + REDUCE + STOP,
}


class _Recorder(pickle.Unpickler):
    """A real unpickler that records each global it would look up and returns a harmless callable."""

    def __init__(self, data):
        super().__init__(io.BytesIO(data))
        self.seen = []

    def find_class(self, module, name):
        self.seen.append((module, name))
        return lambda *a, **k: None


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_scanner_finds_exactly_what_a_real_unpickler_looks_up(case):
    data = CRAFTED[case]
    rec = _Recorder(data)
    rec.load()
    assert pickle_globals(io.BytesIO(data)) == rec.seen
    refused = not all(weights_global_ok(m, n) for m, n in rec.seen)
    assert refused == (case != "allowed")
    if refused:
        with pytest.raises(KdataError, match="refused: loading it would call"):
            check_pickle(io.BytesIO(data), where="crafted")


def test_scanner_refuses_what_it_cannot_read():
    ext = PROTO + b"\x82\x01" + STOP  # EXT1: a global through the copyreg registry
    computed = PROTO + b"C\x02os" + _u("system") + STACK_GLOBAL + STOP  # a bytes module name
    for data in (ext, computed, b"\x80\x04garbage", PROTO + _u("a")):
        with pytest.raises(KdataError, match="crafted: "):
            check_pickle(io.BytesIO(data), where="crafted")


def test_real_checkpoints_pass_in_both_formats(tmp_path):
    state = {"w": torch.randn(3, 2, generator=torch.Generator().manual_seed(0)),
             "b": torch.zeros(3, dtype=torch.float16), "n": torch.tensor(7),
             "p": torch.nn.Parameter(torch.ones(2)), "h": torch.ones(2, dtype=torch.bfloat16)}
    for legacy in (False, True):
        path = tmp_path / f"s{legacy}.pt"
        torch.save({"state_dict": state, "epoch": 3, "tags": {"a", "b"}, "blob": b"xy"}, path,
                   _use_new_zipfile_serialization=not legacy)
        loaded = load_state_file(path)
        assert torch.equal(loaded["state_dict"]["w"], state["w"]) and loaded["blob"] == b"xy"


EXPRESSIONS_OK = [
    ("Symbol('s77', positive=True, integer=True)", False),
    ("Add(FloorDiv(Symbol('s77', positive=True, integer=True), Integer(2)), Integer(1))", False),
    ("s0*s1 + 2", False),
    ("(L['x'].size()[0] // 2) <= L['x'].size()[0]", True),
    ("L['x'].stride()[1] == 3 and not math.isnan(L['y'])", True),
]
EXPRESSIONS_BAD = [
    ("__import__('os').system('id')", False), ("Symbol('x').__class__", False), ("getattr(s0, 'real')", False),
    ("(lambda: 0)()", False), ("[s0 for s0 in ()]", False), ("Symbol('a\"b')", False), ("eval('1')", False),
    ("Symbol('x') if s0 else s1", False), ("s0 # comment", False), ("L['x'].__class__", True),
    ("L['x'].size()[0] == 1, open('f')", True), ("L['x\"); os.system(\"id')", True),
]


def _graph_with(expr: str, guard: bool, tmp_path, src) -> str:
    out = tmp_path / "g.pt2"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("models/model.json"):
                doc = json.loads(data)
                if guard:
                    doc["guards_code"] = [expr]
                else:
                    doc["graph_module"]["graph"]["sym_int_values"] = {"z": {"as_expr": {"expr_str": expr}}}
                data = json.dumps(doc).encode()
            zout.writestr(info.filename, data)
    return out


@pytest.mark.parametrize("expr,guard", EXPRESSIONS_OK + EXPRESSIONS_BAD)
def test_expressions_torch_would_eval(tmp_path, expr, guard):
    from tests.helpers.real_inputs import exported_models

    path = _graph_with(expr, guard, tmp_path, exported_models()["student_pt2"])
    if (expr, guard) in EXPRESSIONS_OK:
        check_pt2_archive(path)
    else:
        with pytest.raises(KdataError, match="refused: expression") as err:
            check_pt2_archive(path)
        assert "\n" not in str(err.value)


def test_exported_program_with_symbolic_sizes_and_guards_loads(tmp_path):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(64, 3)

        def forward(self, x):
            b = x.shape[0]
            return self.lin(x.reshape(b, -1)) * (b // 2 + 1), x.flatten(1)[: b // 2]

    x = torch.randn(4, 1, 8, 8)
    ep = torch.export.export(Net(), (x,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    path = tmp_path / "dyn.pt2"
    torch.export.save(ep, str(path))
    doc = json.loads(zipfile.ZipFile(path).read("dyn/models/model.json"))
    assert doc["guards_code"] and "FloorDiv" in json.dumps(doc)  # the checker sees guards and sympy here
    program = load_exported_program(path, probe_shape=(4, 1, 8, 8))
    with torch.inference_mode():
        got, want = program(x), ep.module()(x)
    torch.testing.assert_close(got[0], want[0])


def test_concurrent_loads_from_threads_all_succeed_and_leave_logging_and_warnings_alone(tmp_path):
    """torch.export.load is not thread-safe and the silenced logger levels / warnings filters are
    process-wide: threads loading the same and different archives at once must all get their model,
    and the process's torch logger levels and warnings filters must be as before."""
    import logging
    import threading
    import warnings

    from kdata.models.safe_load import load_torchscript_program

    torch.manual_seed(0)
    x = torch.randn(2, 1, 8, 8)
    paths, want = [], []
    for i in range(3):
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3 + i))
        path = tmp_path / f"m{i}.pt2"
        torch.export.save(torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim.AUTO},)), str(path))
        paths.append(path)
        want.append(net(x).detach())
    script = tmp_path / "m.pt"
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    torch.jit.save(torch.jit.trace(net, x), str(script))
    want_script = net(x).detach()
    loggers = [logging.getLogger("torch")] + [lg for n, lg in list(logging.root.manager.loggerDict.items())
                                              if n.startswith("torch.") and isinstance(lg, logging.Logger)]
    levels, filters = [lg.level for lg in loggers], list(warnings.filters)
    jobs = [i % 3 for i in range(9)] + [0, 0, 0, "script", "script"]  # the same file and different files
    start, results = threading.Barrier(len(jobs)), {}

    def load(k, job):
        start.wait()
        try:
            if job == "script":
                results[k] = load_torchscript_program(script, probe_shape=(2, 1, 8, 8))(x)
            else:
                results[k] = load_exported_program(paths[job], probe_shape=(2, 1, 8, 8))(x)
        except Exception as exc:  # noqa: BLE001 - the assertion below names it
            results[k] = exc

    for _ in range(2):
        threads = [threading.Thread(target=load, args=(k, job)) for k, job in enumerate(jobs)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        failed = {k: r for k, r in results.items() if isinstance(r, Exception)}
        assert not failed, failed
        for k, job in enumerate(jobs):
            torch.testing.assert_close(results[k].detach(), want_script if job == "script" else want[job])
        assert [lg.level for lg in loggers] == levels
        assert logging.getLogger("torch").getEffectiveLevel() < logging.CRITICAL
        assert list(warnings.filters) == filters
