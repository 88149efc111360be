"""The embedded default for text: ``builtin:text-web`` and ``builtin:text-test``, built from the
standard library's docstrings (``kdata.pools.stdlib_text``: parsed, never imported). No download.

``builtin:text-web`` looks like text collected from the web, each row's ``source`` naming its kind:

* ``clean`` — a docstring paragraph with its module family as ``label`` and ``domain``,
* ``noisy_label`` — the same kind of paragraph with a wrong domain (``LABEL_NOISE`` = 15% of them),
* ``junk`` — binary-looking strings, code dumps (stdlib function bodies), boilerplate and
  licence-like page furniture, and repeated tokens, with a random domain,
* ``near_duplicate`` — a copy of a clean or noisy row with a few small edits (a swapped, dropped
  or doubled word, a changed letter or case), keeping that row's label.

``builtin:text-test`` is the held-out clean split (labels correct; disjoint from the pool and from
the built-in teacher's corpus). The ground truth (kind, true domain, duplicate-of, junk kind) is
in ``text_web_truth``, which selection never reads. Both pools depend only on the Python version
(it is part of their cache key and of every unit's fingerprint).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa

from kdata.core.atomic import read_parquet, sha256_file
from kdata.core.paths import cache_dir
from kdata.dataset.schema import POOL_SCHEMA
from kdata.pools.base import Pool, PoolUnit, register_reader
from kdata.pools.materialise import materialise as materialise_shards
from kdata.pools.stdlib_text import (
    DOMAIN_NAMES,
    code_snippets,
    python_version,
    split_texts,
)

POOL_VERSION = "text-web-v1"
POOLS = ("text-web", "text-test")
KINDS = ("clean", "noisy_label", "junk", "near_duplicate")
LABEL_NOISE = 0.15
JUNK_FRAC, NEAR_FRAC = 0.16, 0.10  # of the clean base
JUNK_KINDS = ("binary", "code", "boilerplate", "repeated")
DESCRIPTIONS = {
    "text-web": "Python standard-library docstrings shaped like web text: clean, noisy domain labels, junk, "
                "near-duplicates",
    "text-test": "held-out clean standard-library docstring paragraphs (labels are the true domains)",
}

# Page furniture the junk rows are assembled from (written for kdata).
_BOILER = (
    "All rights reserved.", "Copyright {year} {org}.", "This page uses cookies to remember your settings.",
    "By continuing to browse you accept our terms of use and privacy notice.", "Home | About | Contact | Sitemap",
    "Posted by admin on {year}-0{m}-1{d}.", "{n} comments. Share this post.", "Click here to subscribe.",
    "Permission is granted to copy this page provided this notice is kept.", "Skip to main content.",
    "Licensed to the public under the terms printed on the back of the box.", "Page {n} of {m}. Next >>",
    "Sign in | Register | Forgot your password?", "Powered by a content management system, version {m}.{d}.",
)
_ORGS = ("Example Corp", "The Web Team", "Foo Widgets Ltd", "Site Owners", "Acme Inc")


def _binary(rng: np.random.Generator) -> str:
    n = int(rng.integers(80, 320))
    kind = int(rng.integers(0, 3))
    if kind == 0:  # raw bytes read as Latin-1 (printable range, as scrapers save them)
        codes = rng.integers(0x21, 0x7F, n)
        high = rng.random(n) < 0.35
        codes[high] = rng.integers(0xA1, 0x100, int(high.sum()))
        return bytes(codes.astype(np.uint8)).decode("latin-1")
    if kind == 1:  # a hex dump
        raw = rng.integers(0, 256, n // 2).astype(np.uint8).tobytes()
        return " ".join(raw[i:i + 2].hex() for i in range(0, len(raw), 2))
    import base64

    return base64.b64encode(rng.integers(0, 256, n).astype(np.uint8).tobytes()).decode("ascii")


def _boilerplate(rng: np.random.Generator) -> str:
    parts = [_BOILER[int(i)] for i in rng.choice(len(_BOILER), int(rng.integers(3, 7)), replace=False)]
    fill = {"year": int(rng.integers(1998, 2025)), "org": _ORGS[int(rng.integers(0, len(_ORGS)))],
            "n": int(rng.integers(2, 60)), "m": int(rng.integers(1, 9)), "d": int(rng.integers(0, 9))}
    return " ".join(p.format(**fill) for p in parts)


def _repeated(rng: np.random.Generator, words: list[str]) -> str:
    phrase = " ".join(words[int(i)] for i in rng.integers(0, len(words), int(rng.integers(1, 4))))
    return " ".join([phrase] * int(rng.integers(12, 40)))


def _junk(rng: np.random.Generator, kind: str, *, code: list[str], words: list[str]) -> str:
    if kind == "binary":
        return _binary(rng)
    if kind == "code":
        return code[int(rng.integers(0, len(code)))][:600]
    if kind == "boilerplate":
        return _boilerplate(rng)
    return _repeated(rng, words)


def junk_texts(n: int, *, rng: np.random.Generator) -> list[tuple[str, str]]:
    """``n`` junk rows ``(kind, text)``, the kinds in turn (``JUNK_KINDS``); code dumps are stdlib
    function bodies of at least 150 characters, repeated tokens are words of the pool's text."""
    code = [c for c in code_snippets() if len(c) >= 150]
    words = sorted({w for t, _ in split_texts("pool") for w in t.split() if w.isalpha() and len(w) > 3})
    kinds = [JUNK_KINDS[i % len(JUNK_KINDS)] for i in range(n)]
    return [(k, _junk(rng, k, code=code, words=words)) for k in kinds]


def near_copy(text: str, rng: np.random.Generator) -> str:
    """``text`` with 1–3 small edits: a swapped, dropped or doubled word, a changed letter or case."""
    words = text.split(" ")
    for _ in range(int(rng.integers(1, 4))):
        i = int(rng.integers(0, max(1, len(words) - 1)))
        op = int(rng.integers(0, 5))
        if op == 0 and len(words) > 2:
            words[i], words[i + 1] = words[i + 1], words[i]
        elif op == 1 and len(words) > 3:
            del words[i]
        elif op == 2:
            words.insert(i, words[i])
        elif op == 3 and words[i]:
            j = int(rng.integers(0, len(words[i])))
            words[i] = words[i][:j] + "abcdefghijklmnopqrstuvwxyz"[int(rng.integers(0, 26))] + words[i][j + 1:]
        else:
            words[i] = words[i].upper() if words[i].islower() else words[i].lower()
    out = " ".join(words)
    return out if out != text else f"{text} {words[-1]}"  # the edits cancelled out: double the last word


def _web_rows(seed: int) -> list[dict]:
    """The rows of ``builtin:text-web`` before shuffling: text, label, truth, true domain, dup_of, junk kind."""
    rng = np.random.default_rng([seed, 19])
    base = split_texts("pool")
    rows: list[dict] = []
    for text, domain in base:
        if rng.random() < LABEL_NOISE:
            wrong = DOMAIN_NAMES[(DOMAIN_NAMES.index(domain) + int(rng.integers(1, len(DOMAIN_NAMES))))
                                 % len(DOMAIN_NAMES)]
            rows.append({"text": text, "label": wrong, "truth": "noisy_label", "true_domain": domain})
        else:
            rows.append({"text": text, "label": domain, "truth": "clean", "true_domain": domain})
    for kind, text in junk_texts(int(round(JUNK_FRAC * len(base))), rng=rng):
        rows.append({"text": text, "truth": "junk", "true_domain": None, "junk_kind": kind,
                     "label": DOMAIN_NAMES[int(rng.integers(0, len(DOMAIN_NAMES)))]})
    n_orig = len(base)
    for _ in range(int(round(NEAR_FRAC * len(base)))):
        i = int(rng.integers(0, n_orig))
        rows.append({**rows[i], "text": near_copy(rows[i]["text"], rng), "truth": "near_duplicate", "dup_of": i})
    return rows


@lru_cache(maxsize=4)
def _build_web(seed: int) -> tuple[pa.Table, pa.Table]:
    rows = _web_rows(seed)
    order = np.random.default_rng([seed, 23]).permutation(len(rows))
    ids = {int(old): f"text-web/{new:05d}" for new, old in enumerate(order)}
    picked = [rows[int(o)] for o in order]
    n = len(picked)
    pool = pa.table({
        "sample_id": [ids[int(o)] for o in order],
        "image": pa.nulls(n, pa.binary()),
        "text": [r["text"] for r in picked],
        "label": [r["label"] for r in picked],
        "source": [r["truth"] for r in picked],
        "domain": [r["label"] for r in picked],
        "parent_id": pa.nulls(n, pa.string()),
        "kind": ["original"] * n,
    }).cast(POOL_SCHEMA)
    truth = pa.table({
        "sample_id": pool.column("sample_id"),
        "truth": [r["truth"] for r in picked],
        "true_domain": pa.array([r["true_domain"] for r in picked], pa.string()),
        "dup_of": pa.array([ids[r["dup_of"]] if r.get("dup_of") is not None else None for r in picked], pa.string()),
        "junk_kind": pa.array([r.get("junk_kind") for r in picked], pa.string()),
    })
    return pool, truth


def text_web(*, seed: int = 0) -> pa.Table:
    """The ``builtin:text-web`` pool (pool schema; ``source`` is the row's kind, see the module doc)."""
    return _build_web(seed)[0]


def text_web_truth(*, seed: int = 0) -> pa.Table:
    """Ground truth of ``builtin:text-web``: ``truth`` (kind), ``true_domain`` (null for junk),
    ``dup_of`` (the id a near-duplicate was copied from), ``junk_kind``."""
    return _build_web(seed)[1]


def text_test() -> pa.Table:
    """``builtin:text-test``: the held-out clean paragraphs with their true domains (pool schema)."""
    items = split_texts("test")
    n = len(items)
    return pa.table({
        "sample_id": [f"text-test/{i:05d}" for i in range(n)],
        "image": pa.nulls(n, pa.binary()),
        "text": [t for t, _ in items],
        "label": [d for _, d in items],
        "source": ["clean"] * n,
        "domain": [d for _, d in items],
        "parent_id": pa.nulls(n, pa.string()),
        "kind": ["original"] * n,
    }).cast(POOL_SCHEMA)


def version_tag() -> str:
    """What the built-in text pools depend on: the builder's version and the Python version."""
    return f"{POOL_VERSION}-py{python_version()}"


def materialise(name: str, *, seed: int = 0, n_units: int = 4) -> Path:
    """Write a built-in text pool once as Parquet shards in the cache (keyed by ``version_tag``)."""
    build = (lambda: text_web(seed=seed)) if name == "text-web" else text_test
    return materialise_shards(cache_dir("pools", f"{version_tag()}-{name}-seed{seed}"), build,
                              n_units=n_units if name == "text-web" else 1)


def _unit(path: Path, *, name: str) -> PoolUnit:
    """A unit over one materialised shard (a file kdata wrote itself, read whole: a few hundred rows)."""
    tag = f"+python{python_version()}"
    return PoolUnit(name=name, read=lambda: read_parquet(path), path=str(path),
                    fingerprint=lambda: "sha256:" + sha256_file(path) + tag, labels=lambda: set(DOMAIN_NAMES))


@register_reader(lambda s: s in {f"builtin:{n}" for n in POOLS})
def open_text_builtin(spec: str) -> Pool:
    """``builtin:text-web`` / ``builtin:text-test``: materialised once in the cache, then read from there.

    Every unit's fingerprint ends with the Python version (the text is that version's stdlib)."""
    name = spec.split(":", 1)[1]
    root = materialise(name)
    files = sorted(root.glob("part-*.parquet"))
    units = [_unit(f, name=f"{name}/{f.name}") for f in files]
    return Pool(spec=spec, units=units, description=DESCRIPTIONS[name],
                extra={"python_version": python_version(), "builtin": version_tag()})
