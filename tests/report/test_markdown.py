"""Untrusted values on the card and the terminal, from real runs.

Sample ids, labels, domains and class names can come from a pool or a model that someone else
made. In README.md they stay text: rendered as CommonMark, they produce no live HTML, and the
file holds no control bytes. ``kdata inspect`` prints them without terminal escape sequences.
``kdata card DIR`` reads back only the pool the run was made from. Editing the manifest's pool
spec cannot make the card copy another local file into the README.md or report.html the user
publishes.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("transformers")
pytest.importorskip("markdown_it")

from kdata.cli import main  # noqa: E402
from tests.helpers.text_models import text_assets, tiny_classifier  # noqa: E402

EVIL = "`<img src=x onerror=alert(1)>` | <script>alert(2)</script> \x1b]0;PWNED\x07\x1b[31mRED [link=http://e]L[/link]"
CLASSES = (f"neg{EVIL}", f"<img src=y onerror=alert(3)>pos`|")  # a model's id2label
MARKERS = ("\x1b", "\x07")


def _evil_id(i: int) -> str:
    return f"s{i}{EVIL}"


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    """A text-classification run: sample ids, domains, labels and class names all hostile."""
    d = tmp_path_factory.mktemp("untrusted-text")
    for name, seed in (("t", 0), ("s", 1)):
        tiny_classifier(d / name, labels=CLASSES, seed=seed)
    rows = [{"sample_id": _evil_id(i), "text": f"hello world {i} {EVIL}", "label": CLASSES[i % 2],
             "domain": f"<script>alert('d{i % 2}')</script>{EVIL}"} for i in range(30)]
    (d / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = d / "out"
    assert main(["select", "--pool", str(d / "pool.jsonl"), "--teacher", f"hf:{d / 't'}", "--student",
                 f"hf:{d / 's'}", "--method", "kd3", "--budget", "0.5", "--out", str(out), "--device", "cpu",
                 "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, builtin_models) -> Path:
    """An image run over a Parquet pool whose ids, domains and sources are hostile (one unreadable image)."""
    from kdata.pools.spec import open_pool

    d = tmp_path_factory.mktemp("untrusted-image")
    t = open_pool("builtin:digits-web").units[0].read().slice(0, 60)
    images = t.column("image").to_pylist()
    images[3] = b"not an image " + EVIL.encode()
    for name, values in (("sample_id", [_evil_id(i) for i in range(60)]), ("image", images),
                         ("domain", [EVIL] * 60), ("source", [EVIL] * 60)):
        t = t.set_column(t.schema.get_field_index(name), name, pa.array(values, t.schema.field(name).type))
    pq.write_table(t, d / "pool.parquet")
    out = d / "out"
    assert main(["select", "--pool", str(d / "pool.parquet"), "--method", "kd3", "--budget", "20",
                 "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    return out


def _html(markdown: str) -> str:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").enable("table").render(markdown)


@pytest.mark.parametrize("which", ["text_run", "image_run"])
def test_card_markdown_renders_no_live_html_and_holds_no_control_bytes(which, request):
    out = request.getfixturevalue(which)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert not [c for c in card if c != "\n" and not c.isprintable()], "control characters in README.md"
    html = _html(card)
    assert "<script" not in html and not re.search(r"<[a-z]+\b[^>]*\bonerror", html)
    assert "&lt;script&gt;" in html and "onerror=alert(1)" in html  # shown as text, not dropped
    assert "\\x1b]0;PWNED\\x07" in html  # control characters shown as \xNN
    # every hostile sample id in a code span renders as exactly its (printable) text
    codes = set(re.findall(r"<code>(.*?)</code>", html, re.S))
    shown = "s0" + EVIL.replace("\x1b", "\\x1b").replace("\x07", "\\x07")
    assert shown.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in codes or which == "image_run"
    page = (out / "report.html").read_text()
    assert "report.html" in card and "<script>alert(2)</script>" not in page
    assert not any(m in page for m in MARKERS)  # `cat report.html` drives no terminal either


def test_class_names_and_domains_are_text_in_the_tables(text_run):
    html = _html((text_run / "README.md").read_text(encoding="utf-8"))
    cells = re.findall(r"<td>(.*?)</td>", html, re.S)
    assert "&lt;img src=y onerror=alert(3)&gt;pos`|" in cells  # a class name: one cell, as written
    assert any(c.startswith("&lt;script&gt;alert('d0')&lt;/script&gt;`&lt;img") for c in cells)  # a domain


@pytest.mark.parametrize("which", ["text_run", "image_run"])
def test_inspect_prints_no_terminal_escape_sequences(which, request, capsys):
    out = request.getfixturevalue(which)
    assert main(["inspect", str(out), "--examples", "10"]) == 0
    printed = capsys.readouterr().out
    assert not any(m in printed for m in MARKERS) and "\\x1b]0;PWNED\\x07" in printed
    assert "[link=http://e]L[/link]" in printed  # rich markup in data is shown, not applied
    assert main(["inspect", str(out), "--sample-id", _evil_id(0)]) == 0
    printed = capsys.readouterr().out
    assert not any(m in printed for m in MARKERS) and "\\x1b[31mRED" in printed


def test_error_line_naming_a_file_holds_no_control_bytes(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "gone\x1b]0;PWNED\x07")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kdata: error:") and "\\x1b]0;PWNED\\x07" in err and not any(m in err for m in MARKERS)


def _copy_with_pool(out: Path, dest: Path, spec: str | None, *, drop_fingerprints: bool = False) -> Path:
    shutil.copytree(out, dest)
    m = json.loads((dest / "manifest.json").read_text())
    if spec is not None:  # pool.spec alone: config.pool edited too fails the config-hash check first
        m["pool"]["spec"] = spec
    if drop_fingerprints:  # a manifest written before kdata recorded them
        m["pool"].pop("unit_fingerprints")
    (dest / "manifest.json").write_text(json.dumps(m))
    return dest


def test_card_does_not_copy_a_file_the_manifest_was_edited_to_name(text_run, tmp_path):
    victim = tmp_path / "victim_private.jsonl"
    victim.write_text("".join(json.dumps({"sample_id": _evil_id(i), "text": f"PRIVATE note {i}: password=hunter{i}",
                                          "domain": "secret"}) + "\n" for i in range(30)))
    for name, kw in (("edited", {}), ("old", {"drop_fingerprints": True})):
        d = _copy_with_pool(text_run, tmp_path / name, str(victim), **kw)
        assert main(["card", str(d)]) == 0
        card, report = (d / "README.md").read_text(), (d / "report.html").read_text()
        assert "PRIVATE" not in card and "PRIVATE" not in report and "secret" not in card
        why = "not the pool this dataset was made from" if name == "edited" else "records no unit fingerprints"
        assert why in card and "victim_private.jsonl" in card, name


def test_image_card_does_not_read_an_edited_pool(image_run, tmp_path, capsys):
    """The config repointed at another pool fails the config-hash check: no card is written from it."""
    t = pq.read_table(image_run.parent / "pool.parquet")
    pq.write_table(t.slice(1), tmp_path / "other.parquet")  # another local file with the same ids
    d = _copy_with_pool(image_run, tmp_path / "edited", str(tmp_path / "other.parquet"))
    m = json.loads((d / "manifest.json").read_text())
    m["config"]["pool"] = str(tmp_path / "other.parquet")
    (d / "manifest.json").write_text(json.dumps(m))
    before = (d / "README.md").read_bytes()
    capsys.readouterr()
    assert main(["card", str(d)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'config_hash' is not the hash of its 'config'" in err, err
    assert (d / "README.md").read_bytes() == before


def test_card_finds_a_relative_pool_beside_the_dataset_from_another_directory(tmp_path, monkeypatch):
    """The run's own pool still reads back: a relative spec resolves beside DIR, not only from the cwd."""
    a = text_assets()
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(a / "pool.jsonl", work / "pool.jsonl")
    monkeypatch.chdir(work)
    assert main(["select", "--pool", "pool.jsonl", "--teacher", f"hf:{a / 't'}", "--student", f"hf:{a / 's'}",
                 "--method", "kd3", "--budget", "0.3", "--out", "o", "--device", "cpu", "--quiet"]) == 0
    before = (work / "o" / "README.md").read_bytes()
    assert b"Rejected texts, spread over the reasons" in before and b"could not be read back" not in before
    monkeypatch.chdir(tmp_path)
    assert main(["card", str(work / "o")]) == 0
    assert (work / "o" / "README.md").read_bytes() == before  # same card, rejected texts included
