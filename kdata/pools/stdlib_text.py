"""Clean text that ships with Python itself: paragraphs of the standard library's docstrings.

The ``.py`` sources under ``sysconfig.get_paths()["stdlib"]`` are *parsed* with ``ast`` (nothing
is imported or run). Each module, class and function docstring is split into paragraphs at
blank lines; a paragraph is kept when it reads as prose (100–500 characters, no doctest prompt,
mostly letters). The module a paragraph comes from decides its domain (``DOMAINS``: module
families such as networking or concurrency). The result depends only on the Python version's
sources, so it is the same on every run of one Python version (``python_version`` names it).

Splits, fixed once per domain with a seeded permutation and disjoint: ``train`` (the built-in
teacher's corpus), ``test`` (``builtin:text-test``) and ``pool`` (the clean base of
``builtin:text-web``). Function bodies, without their docstrings, are the pool's code-dump junk.
"""

from __future__ import annotations

import ast
import platform
import sysconfig
from functools import lru_cache
from pathlib import Path

import numpy as np

SPLIT_SEED = 20419
PER_DOMAIN = 300  # at most this many paragraphs per domain (the largest families have ~850)
TEST_FRAC, TRAIN_FRAC = 0.12, 0.40  # the rest is the pool's clean base
MIN_CHARS, MAX_CHARS = 100, 500

# Domain → top-level standard-library modules or packages (tests excluded).
DOMAINS: dict[str, tuple[str, ...]] = {
    "text": ("string", "re", "textwrap", "difflib", "codecs", "gettext", "locale", "shlex", "stringprep",
             "pprint", "reprlib", "tokenize", "token", "rlcompleter"),
    "networking": ("socket", "ssl", "http", "urllib", "email", "smtplib", "ftplib", "imaplib", "poplib", "xmlrpc",
                   "ipaddress", "socketserver", "mailbox", "nntplib", "telnetlib", "wsgiref", "webbrowser",
                   "mimetypes", "quopri"),
    "concurrency": ("threading", "multiprocessing", "concurrent", "asyncio", "queue", "sched", "subprocess",
                    "selectors", "signal", "_threading_local", "contextvars"),
    "data_formats": ("json", "csv", "xml", "html", "configparser", "tomllib", "pickle", "pickletools", "plistlib",
                     "base64", "zipfile", "tarfile", "gzip", "bz2", "lzma", "zipimport", "shelve", "dbm", "sqlite3",
                     "netrc", "copyreg", "struct"),
    "filesystem": ("os", "pathlib", "shutil", "glob", "fnmatch", "tempfile", "filecmp", "stat", "posixpath",
                   "ntpath", "genericpath", "fileinput", "io", "_pyio", "linecache", "zipapp", "importlib",
                   "pkgutil", "site", "sysconfig"),
    "numeric": ("decimal", "_pydecimal", "fractions", "statistics", "random", "numbers", "datetime", "_pydatetime",
                "calendar", "_strptime", "heapq", "bisect", "colorsys", "timeit", "hashlib", "hmac", "secrets"),
    "devtools": ("unittest", "doctest", "pdb", "inspect", "ast", "dis", "typing", "dataclasses", "functools", "abc",
                 "traceback", "warnings", "logging", "argparse", "optparse", "getopt", "trace", "cProfile",
                 "profile", "pstats", "bdb", "code", "codeop", "enum", "contextlib", "collections", "weakref",
                 "copy", "types", "operator"),
}
DOMAIN_NAMES = list(DOMAINS)


def python_version() -> str:
    """The Python version whose standard library the text comes from (e.g. ``3.11.7``)."""
    return platform.python_version()


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def module_files(module: str, *, root: Path | None = None) -> list[Path]:
    """The ``.py`` files of a top-level stdlib module or package (sorted; test folders skipped)."""
    root = root or stdlib_root()
    single = root / f"{module}.py"
    if single.is_file():
        return [single]
    folder = root / module
    if not folder.is_dir():
        return []
    return sorted(f for f in folder.rglob("*.py")
                  if not {"test", "tests", "idle_test"} & set(f.relative_to(root).parts))


def prose(paragraph: str) -> str | None:
    """A docstring paragraph as one line of prose, or None when it is not prose worth keeping."""
    text = " ".join(paragraph.split())
    if not MIN_CHARS <= len(text) <= MAX_CHARS or ">>>" in text or "..." in text[:4]:
        return None
    letters = sum(c.isalpha() or c == " " for c in text)
    return text if letters >= 0.8 * len(text) else None


def _docs_and_code(path: Path) -> tuple[list[str], list[str]]:
    """Prose paragraphs of every docstring in ``path``, and its function bodies without docstrings."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return [], []
    paras, code = [], []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        doc = ast.get_docstring(node)
        if doc:
            paras += [p for p in map(prose, doc.split("\n\n")) if p]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and len(node.body) > 2:
            body = node.body[1:] if doc else node.body
            fn = ast.FunctionDef(name=node.name, args=node.args, body=body, decorator_list=[], returns=None,
                                 type_params=[], lineno=node.lineno)
            code.append(ast.unparse(fn))
    return paras, code


@lru_cache(maxsize=1)
def corpus() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """``(paragraphs, code)`` per domain: unique paragraphs (sorted) and function sources, both
    deterministic for one Python version. A paragraph found in two domains stays in the first."""
    paras: dict[str, list[str]] = {}
    code: dict[str, list[str]] = {}
    seen: set[str] = set()
    root = stdlib_root()
    for domain, modules in DOMAINS.items():
        found: set[str] = set()
        funcs: list[str] = []
        for module in modules:
            for f in module_files(module, root=root):
                p, c = _docs_and_code(f)
                found.update(p)
                funcs += c
        paras[domain] = sorted(found - seen)
        seen |= found
        code[domain] = funcs
    return paras, code


@lru_cache(maxsize=1)
def splits() -> dict[str, list[tuple[str, str]]]:
    """Disjoint clean splits ``train`` / ``test`` / ``pool``: lists of ``(text, domain)``."""
    paras, _ = corpus()
    out: dict[str, list[tuple[str, str]]] = {"train": [], "test": [], "pool": []}
    for d, domain in enumerate(DOMAIN_NAMES):
        items = paras[domain]
        order = np.random.default_rng([SPLIT_SEED, d]).permutation(len(items))[:PER_DOMAIN]
        n_test, n_train = int(round(len(order) * TEST_FRAC)), int(round(len(order) * TRAIN_FRAC))
        for name, idx in (("test", order[:n_test]), ("train", order[n_test:n_test + n_train]),
                          ("pool", order[n_test + n_train:])):
            out[name] += [(items[i], domain) for i in idx]
    return out


def split_texts(split: str) -> list[tuple[str, str]]:
    """``(text, domain)`` pairs of a clean split: ``train``, ``test`` or ``pool``."""
    return list(splits()[split])


def code_snippets() -> list[str]:
    """Function bodies (docstrings removed) of every domain, in a fixed order: the code-dump junk."""
    _, code = corpus()
    return [c for domain in DOMAIN_NAMES for c in code[domain]]
