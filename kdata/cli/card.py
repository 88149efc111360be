"""``kdata card DIR``: (re)write the data card of a curated dataset, optionally copy it to a card directory."""

from __future__ import annotations

from kdata.cli.common import add_dataset_dir, dataset_dir, emit_json


def register(sub) -> None:
    p = sub.add_parser("card", help="(re)write the data card (README.md, PNG plots, report.html) of a dataset",
                       description="Regenerate DIR/README.md (Hugging Face dataset-card front matter, recipe, counts, "
                                   "class balance, scores, biases, how to load), its plots and DIR/report.html (a "
                                   "static page to browse kept and rejected samples) from manifest.json, "
                                   "decisions.parquet and the shards; record their checksums in the manifest.")
    add_dataset_dir(p, help="a curated dataset directory written by kdata select / demo / dedup / augment")
    p.add_argument("--card-dir", default=None, metavar="DIR", help="also copy the card to DIR/<dataset-name>.md")
    p.add_argument("--license", default=None, metavar="ID",
                   help="the pool's licence as a Hugging Face licence id (e.g. cc-by-4.0), recorded in the manifest "
                        "and stated by the card; without it, a licence set before (here, or by hand in the card's "
                        "front matter) is kept")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run)


def run(args) -> int:
    from kdata.report.card import regenerate

    result = regenerate(dataset_dir(args, "card"), card_dir=args.card_dir, license_id=args.license)
    if args.json:
        emit_json(result)
    else:
        print(f"kdata: card {result['card']} ({len(result['files']) - 2} plot(s)), report {result['report']}")
        if result.get("published"):
            print(f"  copied to {result['published']}")
    return 0
