"""``kdata methods``: the registered selection methods, one line each with its kind and paper."""

from __future__ import annotations

import re

from kdata.cli.common import emit_json

ARXIV = re.compile(r"\s*\(arXiv (\d{4}\.\d{4,5})\)")


# What each need (kdata.pipeline.needs) means to a user
NEED_WORDS = {"critic": "--critic DIR, required",
              "reference": "--reference SPEC (required for causal-LM text; for class predictions, else the student)",
              "domains": "the pool's or the --scores file's 'domain' column",
              "lm_domains": "causal-LM text: the pool's 'domain' column as strata"}


def register(sub) -> None:
    p = sub.add_parser("methods", help="list the selection methods that --method accepts",
                       description="List the registered selection methods (kdata.selection.methods): name, kind "
                                   "(a ranker orders rows for the budget, a filter drops rows before it, a sampler "
                                   "picks its own rows after dedup), what it "
                                   "does and its paper. Chain them with commas: --method critic,kd3.")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run)


def method_rows() -> list[dict]:
    """One dict per method (and the default recipe): name, kind, text, arxiv, needs."""
    from kdata.selection.methods import available
    from kdata.selection.recipes import DEFAULT_CHAIN, DEFAULT_DEDUP

    rows = []
    for name, m in available().items():
        found = ARXIV.search(m.doc)
        rows.append({"name": name, "kind": m.kind, "text": ARXIV.sub("", m.doc).strip(),
                     "arxiv": found.group(1) if found else None, "needs": list(m.needs)})
    rows.append({"name": "default", "kind": "recipe",
                 "text": f"what --method left out runs: dedup (--dedup {DEFAULT_DEDUP} when a pool is read), then "
                         f"{','.join(DEFAULT_CHAIN)}: cut a small likely-junk tail, sample every predicted-class x "
                         f"difficulty stratum", "arxiv": None, "needs": []})
    return rows


def run(args) -> int:
    rows = method_rows()
    if args.json:
        emit_json({"methods": rows})
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        paper = f"arXiv {r['arxiv']}" if r["arxiv"] else ("baseline" if r["kind"] != "recipe" else "see docs/methods.md")
        needs = f" (uses {'; '.join(NEED_WORDS.get(n, n) for n in r['needs'])})" if r["needs"] else ""
        print(f"{r['name']:<{width}}  {r['kind']:<7}  {r['text']}{needs} [{paper}]")
    return 0
