"""The ``kdata`` command line. Each command lives in its own module with ``register(subparsers)``.

Exit codes: 0 success, 1 runtime failure, 2 usage error. Messages go to stderr, data to stdout.
"""

from __future__ import annotations

import argparse
import importlib
import errno
import os
import sys

# idle OpenMP threads sleep instead of spinning: decode workers and the forward pass share the cores
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from kdata.core.errors import KdataError, printable
from kdata.core.warn import shown_as_lines

# module names under kdata.cli, in the order ``kdata --help`` lists them
COMMANDS = ["select", "methods", "inspect", "demo", "train", "generate", "critic", "augment", "dedup", "card", "cache", "serve"]


class _Parser(argparse.ArgumentParser):
    """One convention for every command: defaults shown in ``--help``, shared options always have
    help, a command without a description gets its one-line help as one, usage errors are one line."""

    def __init__(self, *args, **kwargs):
        from kdata.cli.common import HelpFormatter

        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        from kdata.cli.common import COMMON_HELP

        shared = next((COMMON_HELP[a] for a in args if a in COMMON_HELP), None)
        if kwargs.get("help") is None and shared:
            kwargs["help"] = shared
        return super().add_argument(*args, **kwargs)

    def add_subparsers(self, **kwargs):
        action = super().add_subparsers(**kwargs)
        add_parser = action.add_parser

        def add_with_description(name, **kw):
            if kw.get("description") is None and kw.get("help"):
                kw["description"] = kw["help"][0].upper() + kw["help"][1:] + "."
            return add_parser(name, **kw)

        action.add_parser = add_with_description
        return action

    def error(self, message):  # usage errors: one line, exit 2
        self.exit(2, f"kdata: error: {printable(message)}\n")


def build_parser() -> argparse.ArgumentParser:
    from kdata.core.version import __version__

    parser = _Parser(prog="kdata", description="Curate training data for knowledge distillation.",
                     epilog="`kdata COMMAND --help` for a command's options. Docs: docs/index.md in the "
                            "source tree (docs/cli.md, docs/methods.md, docs/hard.md, ...), or `mkdocs serve` "
                            "in a checkout.")
    parser.add_argument("--version", action="version", version=f"kdata {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue  # command not built yet
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    _quiet_transformers()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        with shown_as_lines():  # kdata's warnings: one line each on stderr (kdata.core.warn)
            return int(args.func(args) or 0)
    except KdataError as exc:
        print(error_line(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("kdata: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `kdata … | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or os.environ.get("KDATA_DEBUG"):
            return _unexpected(exc)
        where = f"{printable(exc.filename)}: " if getattr(exc, "filename", None) else ""
        print(f"kdata: error: {where}no space left on device (free space and rerun)", file=sys.stderr)
        return 1
    except Exception as exc:  # unexpected: still one line unless KDATA_DEBUG is set
        return _unexpected(exc)


def _quiet_transformers() -> None:
    """The command owns its process: transformers' advisory log lines and progress bars (a model
    saved by ``kdata train``, a tokenizer loaded) stay off its stderr for all of it, as environment
    defaults read when transformers is imported (a library caller keeps its own settings)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if sys.modules.get("transformers") is not None:  # imported already (the command run in-process): set it now
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def error_line(exc: BaseException) -> str:
    """The one line a failure prints: a KdataError's message with any wrapped library text joined onto
    it; for anything unexpected, its type and the first line of its message."""
    lines = [printable(line.strip()) for line in str(exc).splitlines() if line.strip()]  # a file name: no ESC/BEL
    if isinstance(exc, KdataError):
        return f"kdata: error: {' '.join(lines)}"
    return f"kdata: error: {type(exc).__name__}: {lines[0] if lines else ''} (set KDATA_DEBUG=1 for the traceback)"


def _unexpected(exc: BaseException) -> int:
    if os.environ.get("KDATA_DEBUG"):
        raise exc
    print(error_line(exc), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
