"""What the code of a TorchScript archive (its ``code/*.py`` members) may call, checked before torch loads it.

TorchScript's serialized code is Python syntax that torch compiles on load and runs on every forward.
It can reach ``torch.save``/``aten::save`` (a file written wherever the model says), ``torch.from_file``
(a file mapped) and ``print`` (raw bytes on the user's terminal). The check reads the code as Python
*tokens* — names, operators, numbers and strings, without comments, line breaks or continuations —
so ``torch.#…⏎save`` is ``torch.save`` as TorchScript's own lexer sees it. Refused: any of
``_DENIED_NAMES`` as a name anywhere (an alias or ``from torch import save`` included), ``print(``,
and the dotted forms of ``_DENIED`` in the joined token stream (strings too: a false refusal is the
safe side).
"""

from __future__ import annotations

import io
import re
import tokenize

from kdata.core.errors import KdataError, printable

_DENIED = re.compile(r"(torch|aten)\.(save|from_file)\b|from_file|load_tensor|debugprims|\.load_library")
_DENIED_NAMES = {"save": "file access", "from_file": "file access", "load_tensor": "file access",
                 "load_library": "loading a native library", "debugprims": "file access"}
_KEPT = (tokenize.NAME, tokenize.OP, tokenize.NUMBER, tokenize.STRING)


def check_torchscript_code(text: str, *, where: str) -> None:
    """Raise one ``KdataError`` line when ``text`` (one ``code/`` member) calls what a model may not."""
    try:
        toks = [t for t in tokenize.generate_tokens(io.StringIO(text).readline) if t.type in _KEPT]
    except (tokenize.TokenError, SyntaxError) as exc:  # IndentationError is a SyntaxError
        raise KdataError(f"{where}: refused: its code is not valid TorchScript source "
                         f"({type(exc).__name__}: {printable(str(exc).splitlines()[0] if str(exc) else '')})") from None
    hit = _DENIED.search("".join(t.string for t in toks))
    if hit:
        raise KdataError(f"{where}: refused: calls {hit.group(0)!r} (file access from a model is not allowed)")
    for i, t in enumerate(toks):
        if t.type != tokenize.NAME:
            continue
        if t.string in _DENIED_NAMES:
            raise KdataError(f"{where}: refused: names {t.string!r} on line {t.start[0]} "
                             f"({_DENIED_NAMES[t.string]} from a model is not allowed)")
        if t.string == "print" and i + 1 < len(toks) and toks[i + 1].string == "(":
            raise KdataError(f"{where}: refused: calls 'print' on line {t.start[0]} (a model writing to the "
                             "terminal is not allowed)")
