"""``kdata inspect DIR``: what was kept, what was dropped and why.

Exit 1 when the integrity check fails (a file listed in the manifest is missing, changed or
unreadable); exit 2 for usage errors (no dataset at DIR, unknown ``--sample-id``).
"""

from __future__ import annotations

from kdata.cli.common import add_dataset_dir, dataset_dir, emit_json
from kdata.core.errors import printable
from kdata.report.markdown import fmt


def register(sub) -> None:
    p = sub.add_parser("inspect", help="summarise a curated dataset: counts, reasons, classes, scores, checksums",
                       description="Summarise the curated dataset DIR: counts by decision and reason, class "
                                   "balance, score quantiles, teacher/student agreement, the sha256 of every shard "
                                   "checked against the manifest (exit 1 when one fails), the data card's state "
                                   "and example rows.")
    add_dataset_dir(p, help="a curated dataset directory written by kdata select / demo / dedup / augment")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--examples", type=int, default=5, metavar="N", help="example rows to show (kept and rejected; ≥ 0)")
    p.add_argument("--quarantined", type=int, default=50, metavar="N",
                   help="quarantined rows to list, taken in turn from each kind of error (≥ 0; the counts by kind "
                        "always cover every row)")
    p.add_argument("--sample-id", default=None, metavar="ID", help="show one sample: its decision, reason and scores")
    p.add_argument("--grid", default=None, metavar="OUT.png",
                   help="write the card's thumbnail grid: best-ranked kept, random kept per class, most clearly "
                        "rejected images")
    p.set_defaults(func=run)


def run(args) -> int:
    from kdata.core.errors import KdataError
    from kdata.report.inspect import sample, summarise

    if args.examples < 0:
        raise KdataError(f"--examples {args.examples}: must be a whole number ≥ 0 (example rows per table)")
    if args.quarantined < 0:
        raise KdataError(f"--quarantined {args.quarantined}: must be a whole number ≥ 0 (quarantined rows to list)")
    args.dir = dataset_dir(args, "inspect")
    if args.sample_id is not None:
        row = sample(args.dir, args.sample_id)
        if args.json:
            emit_json(row)
        else:
            _console().print(render_sample(row))
        return 0
    bad = manifest_problem(args.dir)
    if bad:  # a field of the wrong type: nothing to summarise from (the readers below would trip on it)
        raise KdataError(f"integrity: FAILED: {bad}", exit_code=1)
    s = summarise(args.dir, n_examples=args.examples, n_quarantined=args.quarantined)
    if args.grid:
        if not args.grid.lower().endswith(".png"):
            raise KdataError(f"--grid {args.grid}: expected a .png file name")
        from pathlib import Path

        from kdata.report.card import thumbnail_grid
        from kdata.report.inspect import load_run

        run_ = load_run(args.dir)
        try:
            Path(args.grid).parent.mkdir(parents=True, exist_ok=True)
            ok, note = thumbnail_grid(run_, Path(args.grid))
        except OSError as exc:  # the user's path: one line, exit 2
            raise KdataError(f"--grid {args.grid}: cannot write the grid there ({exc.strerror or exc})") from None
        if not ok:
            raise KdataError(f"{args.dir}: no grid written to {args.grid}: {note}")
        s["grid"] = {"path": args.grid, "note": note}
    if args.json:
        emit_json(s)
    else:
        render(s, _console())
    return 0 if s["integrity"]["ok"] else 1


def manifest_problem(out) -> str | None:
    """The manifest's first own problem (``kdata.dataset.integrity.manifest_shape``), or None."""
    from kdata.dataset.integrity import manifest_shape
    from kdata.dataset.writer import read_manifest

    manifest = read_manifest(out)
    problems = manifest_shape(out, manifest) if manifest is not None else []
    return problems[0] if problems else None


def _console():
    """A terminal gets tables that fit its width; a pipe or file gets them whole (no truncated
    column names): rich would otherwise assume 80 columns."""
    import sys

    from rich.console import Console

    wide = None if sys.stdout.isatty() else 400
    return Console(highlight=False, soft_wrap=False, width=wide)


MAX_KINDS = 20  # kinds of quarantine error in the terminal table (--json lists every kind)

# column headings of the example tables (narrow terminals)
SHORT = {"teacher_pred": "T", "student_pred": "S", "teacher_conf": "T conf", "label_idx": "label",
         "kl_ts": "KL(T‖S)"}
PREDICTED = ("teacher_pred", "student_pred")


def _f(v, nd: int = 3) -> str:
    """A value for a rich table or markup line: ``fmt``, control characters shown as ``\\xNN`` (``printable``:
    a sample id cannot send terminal escape sequences) and rich markup escaped (nor style or link text)."""
    from rich.markup import escape

    return escape(printable(fmt(v, nd)))


def render(s: dict, console) -> None:
    """The terminal summary: a header line, then rich tables."""
    for part in (_header, _decisions, _quarantined, _class_balance, _score_quantiles, _agreement, _integrity, _card, _examples,
                 _text, _grid):
        part(s, console)


def _text(s: dict, console) -> None:
    """Text runs (``kdata.report.text_run``): kept/rejected texts, domain mixture, perplexity quantiles."""
    from rich.table import Table

    tx = s.get("text")
    if not tx:
        return
    for title, rows, first in (("kept texts (best ranked)", tx["kept_texts"], "rank"),
                               ("rejected texts (by reason)", tx["rejected_texts"], "reason")):
        if rows:
            t = Table(title=title, title_justify="left")
            for col in (first, "sample_id", "text"):
                t.add_column(col, overflow="fold")
            for r in rows:
                t.add_row(_f(r.get(first)), _f(r["sample_id"]), _f(r.get("text")))
            console.print(t)
    if tx["domain_mixture"]:
        t = Table(title="domain mixture, pool → kept", title_justify="left")
        for col in ("domain", "pool", "pool %", "kept", "kept %"):
            t.add_column(col, justify="left" if col == "domain" else "right")
        for r in tx["domain_mixture"]:
            pct = [None if v is None else 100 * v for v in (r["pool_share"], r["kept_share"])]
            t.add_row(_f(r["domain"]), _f(r["pool"]), _f(pct[0], 1), _f(r["kept"]), _f(pct[1], 1))
        console.print(t)
    if tx["perplexity"]:
        t = Table(title="perplexity (exp mean token NLL), pool vs kept", title_justify="left")
        for col in ("model", "rows", "n", "p10", "p50", "p90"):
            t.add_column(col, justify="left" if col in ("model", "rows") else "right")
        for who, v in tx["perplexity"].items():
            for where in ("pool", "kept"):
                q = v.get(where) or {}
                t.add_row(who, where, _f(q.get("n")), *(_f(q.get(k), 2) for k in ("p10", "p50", "p90")))
        console.print(t)
    if tx.get("note"):
        console.print(f"note: {printable(tx['note'])}", markup=False)


def _header(s: dict, console) -> None:
    c = s["counts"] or {}
    console.print(f"[bold]{_f(s['out'])}[/bold]: {_f(s['rows'])} curated rows in {len(s['files'])} shard(s); "
                  f"methods {_f(', '.join(s.get('methods') or []))}; pool {_f(s['pool'])}; "
                  f"teacher {_f(s['teacher'])} → student {_f(s['student'])}"
                  + (f"; reference {_f(s['reference'])}" if s.get("reference") else ""))
    console.print(f"in {c.get('n_in')}  kept {c.get('kept')}  rejected {c.get('rejected')}  "
                  f"quarantined {c.get('quarantined')}")


def _decisions(s: dict, console) -> None:
    from rich.table import Table

    c = s["counts"] or {}
    d = s["decisions"]
    t = Table(title="decisions", title_justify="left")
    t.add_column("decision / reason")
    t.add_column("samples", justify="right")
    t.add_column("share", justify="right")
    n_in = c.get("n_in") or 0

    def pct(n):
        return f"{100 * n / n_in:.1f}%" if n_in else "–"

    t.add_row("[green]kept[/green]", str(c.get("kept")), pct(c.get("kept") or 0))
    for r, n in (c.get("rejected_by_reason") or {}).items():
        t.add_row(f"[red]rejected[/red] {_f(r)}", str(n), pct(n))
    t.add_row("[yellow]quarantined[/yellow]", str(c.get("quarantined")), pct(c.get("quarantined") or 0))
    if d.get("generated"):
        t.add_row("generated (HARD)", str(d["generated"]), "")
        t.add_row("  generated kept (in shards)", str(d["generated_kept"]), "")
        t.add_row("  generated rejected (critic, teacher flip)", str(d["generated_rejected"]), "")
    console.print(t)


def _quarantined(s: dict, console) -> None:
    """The quarantined rows by kind of error (every row counted), the listed rows under their kind, and
    how many are not listed."""
    from rich.table import Table

    kinds, total = s.get("quarantined_by_kind") or {}, s.get("quarantined_total") or 0
    if not total:
        return
    t = Table(title=f"quarantined by kind of error ({total} rows, {len(kinds)} kind(s))", title_justify="left")
    t.add_column("kind of error")
    t.add_column("samples", justify="right")
    t.add_column("listed", justify="right")
    listed: dict[str, list] = {}
    for q in s["quarantined"]:
        listed.setdefault(q.get("kind"), []).append(q)
    for kind, n in list(kinds.items())[:MAX_KINDS]:
        t.add_row(_f(kind), str(n), str(len(listed.get(kind, []))))
    if len(kinds) > MAX_KINDS:  # --json has every kind
        rest = list(kinds.values())[MAX_KINDS:]
        t.add_row(f"… {len(rest)} more kind(s)", str(sum(rest)), str(sum(len(listed.get(k, [])) for k in
                                                                           list(kinds)[MAX_KINDS:])))
    console.print(t)
    for kind, rows in listed.items():
        console.print(f"  {printable(str(kind))} — {kinds.get(kind, len(rows))} row(s):", markup=False)
        for q in rows:
            console.print(f"    {printable(str(q['sample_id']))}: {printable(str(q['error']))}", markup=False,
                          soft_wrap=True)
    hidden = total - len(s["quarantined"])
    if hidden:
        console.print(f"  … and {hidden} more quarantined row(s) not listed (--quarantined {total} lists them all; "
                      f"decisions.parquet holds every error)", markup=False)


def _class_balance(s: dict, console) -> None:
    bal = s["class_balance"]
    if not bal:
        return
    from rich.table import Table

    from kdata.report.inspect import balance_highlights

    t = Table(title="class balance (teacher prediction; web label where known)", title_justify="left")
    generated = any(r.get("generated_teacher") is not None for r in bal)  # HARD rows, apart from the kept samples
    for col in ("class", "pool label", "pool teacher", "kept", "kept share") + (("generated",) if generated else ()):
        t.add_column(col, justify="right")
    kept_total = sum(r["kept_teacher"] or 0 for r in bal) or 1
    shown, line = balance_highlights(bal)  # above 40 classes: the ones that moved most (--json has all)
    for r in shown:
        t.add_row(_f(r["class"]), _f(r["pool_label"]), _f(r["pool_teacher"]), _f(r["kept_teacher"]),
                  f"{100 * (r['kept_teacher'] or 0) / kept_total:.1f}%",
                  *((_f(r["generated_teacher"]),) if generated else ()))
    if line:
        console.print(line)
    console.print(t)


def _score_quantiles(s: dict, console) -> None:
    from rich.table import Table

    generated = any(by.get("generated") for by in s["score_quantiles"].values())
    t = Table(title="score quantiles (kept | rejected" + (" | generated)" if generated else ")"), title_justify="left")
    t.add_column("score")
    t.add_column("rows")
    for name in ("n", "min", "p05", "p50", "p95", "max"):
        t.add_column(name, justify="right")
    for name, by in s["score_quantiles"].items():
        for dec, q in by.items():
            if q:
                t.add_row(_f(name), _f(dec), str(q["n"]),
                          *[_f(q[k], 4) for k in ("min", "p05", "p50", "p95", "max")])
    console.print(t)


def _agreement(s: dict, console) -> None:
    if not s["agreement"]:
        return
    from rich.table import Table

    t = Table(title="agreement (top-1)", title_justify="left")
    for col in ("rows", "n", "teacher = student", "teacher = web label"):
        t.add_column(col, justify="right")
    for name, a in s["agreement"].items():
        t.add_row(_f(name), str(a["n"]), _f(a["teacher_student"]), _f(a["teacher_label"]))
    console.print(t)


def _integrity(s: dict, console) -> None:
    integ = s["integrity"]
    if integ["ok"]:
        console.print(f"integrity: [green]ok[/green] (sha256 of {integ['files_checked']} shard(s) verified)")
    else:
        console.print("integrity: [red]FAILED[/red]")
        for p in integ["problems"]:
            console.print(f"  {printable(p)}", markup=False, soft_wrap=True)


def _card(s: dict, console) -> None:
    card = s["card"]
    if card["recorded"]:
        state = "changed since written: " + ", ".join(card["changed"]) if card["changed"] else "matches the manifest"
        console.print(f"data card: README.md ({printable(state)})", markup=False)
    elif not card["present"]:
        console.print("data card: none (write one with `kdata card DIR`)", markup=False)


def _examples(s: dict, console) -> None:
    from rich.table import Table

    for title, rows in (("kept examples (best ranked)", s["examples"]),
                        ("rejected examples (by reason)", s["rejected_examples"])):
        if not rows:
            continue
        t = Table(title=title, title_justify="left")
        cols = list(rows[0].keys())
        for col in cols:
            text = col in ("sample_id", "reason", "label", *PREDICTED)
            t.add_column(SHORT.get(col, col), justify="left" if text else "right", no_wrap=text)
        names = s.get("class_names") or []
        for r in rows:  # predicted classes by name where the run names its classes
            t.add_row(*[_f(names[r[k]] if k in PREDICTED and isinstance(r[k], int) and 0 <= r[k] < len(names)
                           else r[k]) for k in cols])
        console.print(t)


def _grid(s: dict, console) -> None:
    if s.get("grid"):
        g = s["grid"]
        console.print(f"grid: {printable(g['path'])}" if g["path"] else "grid: not written", markup=False)
        if g["note"]:
            console.print(f"  {printable(g['note'])}", markup=False)


def render_sample(row: dict):
    """One sample as a two-column table: decision first, then every score and field."""
    from rich.table import Table

    t = Table(title=f"sample {_f(row['sample_id'])}", title_justify="left", show_header=False)
    t.add_column("field")
    t.add_column("value", overflow="fold")
    t.add_row("decision", _f(row["decision"]))
    t.add_row("reason", _f(row.get("reason")))
    t.add_row("teacher class", _f(row.get("teacher_class")))
    merged = {**(row.get("decision_row") or {}), **(row.get("shard_row") or {})}
    for k, v in merged.items():
        if k in ("sample_id", "decision", "reason"):
            continue
        if isinstance(v, list):
            v = "[" + ", ".join(_f(x, 4) for x in v) + "]"
        t.add_row(_f(k), _f(v, 4))
    return t
