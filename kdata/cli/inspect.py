"""``kdata inspect DIR``: what was kept, what was dropped and why."""

from __future__ import annotations

from .common import emit_json


def register(sub) -> None:
    p = sub.add_parser("inspect", help="summarise a curated dataset: counts, reasons, classes, scores, checksums")
    p.add_argument("dir", help="a directory written by kdata select / kdata demo")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--examples", type=int, default=5, help="example rows to show")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..inspect import summarise

    s = summarise(args.dir, n_examples=args.examples)
    if args.json:
        emit_json(s)
    else:
        print(render_text(s))
    return 0 if s["integrity"]["ok"] else 1


def render_text(s: dict) -> str:
    c = s["counts"]
    out = [f"{s['out']}: {s['rows']} curated rows in {len(s['files'])} shard(s); methods: {s.get('methods')}",
           f"in {c['n_in']}  kept {c['kept']}  rejected {c['rejected']}  quarantined {c['quarantined']}"]
    for r, n in c.get("rejected_by_reason", {}).items():
        out.append(f"  rejected {r}: {n}")
    for q in s["quarantined"][:10]:
        out.append(f"  quarantined {q['sample_id']}: {q['error']}")
    out.append("kept by teacher class: " + "  ".join(f"{k}:{v}" for k, v in s["class_histogram"].items()))
    if s["teacher_student_agreement"] is not None:
        out.append(f"teacher/student agreement on kept rows: {s['teacher_student_agreement']:.3f}")
    out.append("score quantiles (min p25 p50 p75 max):")
    for name, q in s["score_quantiles"].items():
        out.append(f"  {name:<22}" + " ".join(f"{v:8.4f}" for v in q.values()))
    out.append("integrity: " + ("ok (sha256 verified)" if s["integrity"]["ok"] else "FAILED"))
    for p in s["integrity"]["problems"]:
        out.append(f"  {p}")
    out.append("examples:")
    for e in s["examples"]:
        out.append("  " + "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in e.items()))
    return "\n".join(out)
