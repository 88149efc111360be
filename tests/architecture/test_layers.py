"""The package's layering, checked on the import graph *including* imports inside functions.

Lower layers never import higher ones, siblings in one layer stay independent (except the
pairs listed), there is no import cycle between modules, and no private name is imported from
another module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "kdata"

# lowest first; packages in one tuple share a layer
LAYERS = [("core",), ("dataset",), ("pools",), ("models",), ("scoring",), ("selection", "dedup"), ("augment",),
          ("report", "training"), ("pipeline",), ("flows",), ("cli",)]
LEVEL = {pkg: i for i, group in enumerate(LAYERS) for pkg in group}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, list[tuple[str, list[str], int]]]:
    """module -> [(imported module, imported names, line)] for every kdata import, at any depth."""
    graph = {}
    for path in sorted(PKG.rglob("*.py")):
        mod = _module_name(path)
        is_pkg = path.name == "__init__.py"
        edges = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target == "kdata" or target.startswith("kdata."):
                    edges.append((target, [a.name for a in node.names], node.lineno))
            elif isinstance(node, ast.Import):
                edges += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("kdata.")]
        graph[mod] = edges
    return graph


def _layer(mod: str) -> str | None:
    """The subpackage of ``mod``; None for the package's own top level (``kdata``, ``kdata.__main__``)."""
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 and parts[1] != "__main__" else None


GRAPH = import_graph()


def test_every_subpackage_has_a_layer():
    subpackages = {p.name for p in PKG.iterdir() if (p / "__init__.py").exists()}
    assert subpackages == set(LEVEL), f"unassigned: {subpackages - set(LEVEL)}, stale: {set(LEVEL) - subpackages}"


def test_no_upward_or_sideways_import():
    bad = []
    for mod, edges in GRAPH.items():
        src = _layer(mod)
        for target, names, line in edges:
            targets = [target] if target != "kdata" else []
            if target == "kdata":  # `from kdata import x` imports kdata.x
                targets = [f"kdata.{n}" for n in names if (PKG / n).is_dir() or (PKG / f"{n}.py").exists()]
            for t in targets:
                dst = _layer(t)
                if src is None or dst is None or src == dst:
                    continue
                if LEVEL[dst] > LEVEL[src] or (LEVEL[dst] == LEVEL[src]):
                    bad.append(f"{mod}:{line} imports {t} ({src} → {dst})")
    assert not bad, "layering broken:\n" + "\n".join(bad)


def test_no_import_cycle():
    modules = set(GRAPH)

    def resolve(target: str, names: list[str]) -> list[str]:
        out = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
        return out or ([target] if target in modules else [])

    adj = {m: sorted({t for target, names, _ in edges for t in resolve(target, names) if t != m})
           for m, edges in GRAPH.items()}
    # a package's __init__ importing its own modules is not a cycle worth reporting
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in adj.get(m, []):
            if m == "kdata" or n == "kdata":
                continue
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(adj):
        if m not in state and (cycle := visit(m)):
            pytest.fail("import cycle: " + " → ".join(cycle))


def test_no_private_name_imported_from_another_module():
    bad = [f"{mod}:{line} imports {target}.{n}"
           for mod, edges in GRAPH.items() for target, names, line in edges
           for n in names if n.startswith("_") and n != "__version__"]
    assert not bad, "private names crossing modules:\n" + "\n".join(bad)
