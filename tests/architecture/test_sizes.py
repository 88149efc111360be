"""Small modules and functions: no module over 400 lines, no function over 80 lines unless a
``# long: <reason>`` comment sits on the line above its ``def`` (or its first decorator)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "kdata"
MAX_MODULE, MAX_FUNCTION = 400, 80


def test_no_module_over_the_limit():
    big = {str(p.relative_to(PKG.parent)): n for p in sorted(PKG.rglob("*.py"))
           if (n := len(p.read_text().splitlines())) > MAX_MODULE}
    assert not big, f"modules over {MAX_MODULE} lines: {big}"


def test_no_function_over_the_limit_without_a_reason():
    bad = []
    for p in sorted(PKG.rglob("*.py")):
        lines = p.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            if node.end_lineno - node.lineno + 1 > MAX_FUNCTION and \
                    not (first >= 2 and lines[first - 2].strip().startswith("# long:")):
                bad.append(f"{p.relative_to(PKG.parent)}:{node.lineno} {node.name} "
                           f"({node.end_lineno - node.lineno + 1} lines)")
    assert not bad, "functions over 80 lines without a `# long:` reason:\n" + "\n".join(bad)
