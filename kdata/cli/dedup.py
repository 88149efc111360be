"""``kdata dedup``: deduplicate an already curated dataset into a new one."""

from __future__ import annotations

from kdata.cli.common import emit_json, summary_lines


def register(sub) -> None:
    p = sub.add_parser("dedup", help="remove exact, near or semantic duplicates from curated shards",
                       description="Deduplicate the curated dataset SHARDS (a kdata output directory) at LEVEL and "
                                   "write a new curated dataset (shards, decisions, manifest) to OUT. The "
                                   "better-ranked copy survives; removed rows get reason duplicate_of:<id>.")
    p.add_argument("--shards", required=True, help="curated dataset directory (with manifest.json)")
    p.add_argument("--dedup", required=True, choices=["exact", "near", "semantic"],
                   help="exact (decoded-pixel hash), near (+ 16x16 pixel cosine), semantic (+ SemDeDup)")
    p.add_argument("--dedup-threshold", type=float, default=None,
                   help="cosine threshold of the deepest level (defaults: near 0.996, semantic 0.995)")
    p.add_argument("--dedup-frac", type=float, default=None,
                   help="semantic: remove this fraction of the rows instead of using a threshold")
    p.add_argument("--out", required=True, help="output directory for the deduplicated dataset")
    p.add_argument("--teacher", default=None, help="model for semantic embeddings (default: the manifest's teacher)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run)


def run(args) -> int:
    from kdata.pipeline.derive import dedup_dataset

    report = dedup_dataset(args.shards, out=args.out, level=args.dedup, threshold=args.dedup_threshold,
                           frac=args.dedup_frac, seed=args.seed, teacher=args.teacher, device=args.device)
    if args.json:
        emit_json(report.to_dict())
        return 0
    lines = summary_lines(report)
    removed = (report.info.get("dedup") or {}).get("removed") or {}
    lines[2:2] = [f"    removed at {level}: {n}" for level, n in removed.items()]
    print("\n".join(lines))
    return 0
