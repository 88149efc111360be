"""What a curate run reports to Prefect: a Markdown summary and a table artifact."""

from __future__ import annotations

from pathlib import Path


def summary(report: dict, *, units: list[dict], states: dict, failed: list[dict]) -> tuple[str, list[dict]]:
    """Markdown summary and table rows (counts by decision and reason, class balance, shard paths)."""
    from kdata.report.card_balance import class_balance
    from kdata.report.inspect import load_run

    out = Path(report["out"])
    c = report["counts"]
    rows = [{"kind": "decision", "name": k, "count": c[k]} for k in ("n_in", "kept", "rejected", "quarantined")]
    rows += [{"kind": "rejected_reason", "name": r, "count": n} for r, n in c.get("rejected_by_reason", {}).items()]
    # kept rows per teacher class (causal-LM rows have no class: no balance table)
    balance = {b["class"]: b["kept_teacher"] for b in class_balance(load_run(out)) if b["kept_teacher"]}
    rows += [{"kind": "class_balance", "name": k, "count": n} for k, n in sorted(balance.items())]
    rows += [{"kind": "shard", "name": str(out / f["path"]), "count": f["rows"]} for f in report["files"]]
    n_cached = sum(1 for s in states.values() if s == "Cached")
    lines = [f"# kdata curate: {report['status']}", "",
             f"- output: `{out}`", (f"- pool units: {len(units)} (scoring tasks cached: {n_cached}, "
                                    f"scored: {len(states) - n_cached - len(failed)}, quarantined units: {len(failed)})"),
             f"- in {c['n_in']} · kept {c['kept']} · rejected {c['rejected']} · quarantined {c['quarantined']}", ""]
    if c.get("rejected_by_reason"):
        lines += ["| rejected reason | rows |", "|---|---|"]
        lines += [f"| {r} | {n} |" for r, n in c["rejected_by_reason"].items()] + [""]
    if balance:
        lines += ["| class (teacher) | kept rows |", "|---|---|"]
        lines += [f"| {k} | {n} |" for k, n in sorted(balance.items())] + [""]
    lines += ["| shard | rows | bytes |", "|---|---|---|"]
    lines += [f"| `{out / f['path']}` | {f['rows']} | {f['bytes']} |" for f in report["files"]]
    for f in failed:
        lines += ["", f"**quarantined unit** `{f['unit']}`: {f['error']}"]
    return "\n".join(lines) + "\n", rows
