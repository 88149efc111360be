"""``kdata dedup``: deduplicate an already curated dataset into a new one."""

from __future__ import annotations

import argparse

from kdata.cli.common import (
    add_dataset_dir,
    alias_value,
    dataset_dir,
    emit_json,
    progress_printer,
    stage,
    summary_lines,
)

LEVELS = ["exact", "near", "semantic"]


def register(sub) -> None:
    p = sub.add_parser("dedup", help="remove exact, near or semantic duplicates from curated shards",
                       description="Deduplicate the curated dataset DIR (a kdata output directory) at LEVEL and "
                                   "write a new curated dataset (shards, decisions, manifest) to OUT. The "
                                   "better-ranked copy survives; removed rows get reason duplicate_of:<id>.")
    add_dataset_dir(p, help="curated dataset directory (with manifest.json)")
    p.add_argument("--level", default=None, choices=LEVELS,
                   help="required: exact (decoded-pixel hash), near (+ 16x16 pixel cosine), semantic (+ SemDeDup "
                        "on teacher embeddings)")
    p.add_argument("--dedup", dest="level_alias", default=None, choices=LEVELS, help=argparse.SUPPRESS)
    p.add_argument("--dedup-threshold", type=float, default=None,
                   help="cosine threshold of the deepest level (defaults: near 0.996, semantic 0.995)")
    p.add_argument("--dedup-frac", type=float, default=None,
                   help="semantic: remove this fraction of the rows instead of using a threshold")
    p.add_argument("--out", required=True, help="output directory for the deduplicated dataset")
    p.add_argument("--teacher", default=None, help="model for semantic embeddings (default: the manifest's teacher)")
    p.add_argument("--embedder", default=None, metavar="hf:PATH",
                   help="text datasets: sentence-embedding model for near/semantic (a local sentence-transformers "
                        "or transformers directory); exact text dedup compares NFKC, case-folded, "
                        "whitespace-collapsed text")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the similarity search (near) and the k-means clustering (semantic)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (checked at every level; only "
                                                    "semantic runs a model)")
    p.add_argument("--workers", default="auto", metavar="N|auto",
                   help="processes computing image features, started once per run (auto: none under 10,000 rows, "
                        "else one per core)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run)


def run(args) -> int:
    import time

    from kdata.core.errors import KdataError
    from kdata.pipeline.derive import dedup_dataset

    shards = dataset_dir(args, "dedup")
    level = alias_value(args, "level", "level_alias", flag="--level", old_flag="--dedup")
    if level is None:
        raise KdataError("kdata dedup: give --level exact, near or semantic")
    t0 = time.perf_counter()
    with stage(progress_printer(args.quiet or args.json), "deduplicating"):
        report = dedup_dataset(shards, out=args.out, level=level, threshold=args.dedup_threshold,
                               frac=args.dedup_frac, seed=args.seed, teacher=args.teacher, device=args.device,
                               embedder=args.embedder, workers=args.workers)
    report.seconds = report.seconds or time.perf_counter() - t0  # "already complete" runs report 0
    if args.json:
        emit_json(report.to_dict())
        return 0
    lines = summary_lines(report)
    removed = (report.info.get("dedup") or {}).get("removed") or {}
    lines[2:2] = [f"    removed at {level}: {n}" for level, n in removed.items()]
    print("\n".join(lines))
    return 0
