"""Data cards: written by every run beside the shards, parseable front matter, counts that match the
manifest, real PNG plots, byte-identical regeneration, publishing to a card directory, a biases
section about the methods that ran and thumbnails that show typical kept rows."""

import json
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from kdata.cli import main
from kdata.report.card import read_front_matter, regenerate, size_category


@pytest.fixture()
def run_copy(demo_run, tmp_path) -> Path:
    """A private copy of the session's demo output, same directory name (tests here modify it)."""
    out = tmp_path / demo_run.name
    shutil.copytree(demo_run, out)
    return out


def _links(text: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)


def test_demo_writes_a_card_matching_the_manifest(demo_run):
    manifest = json.loads((demo_run / "manifest.json").read_text())
    text = (demo_run / "README.md").read_text()
    fm = read_front_matter(text)
    assert fm == yaml.safe_load(text.split("---\n")[1])  # plain YAML, safe_load parses it
    for key in ("pretty_name", "license", "task_categories", "size_categories", "source_datasets", "configs"):
        assert fm[key], key
    assert fm["annotations_creators"] == ["machine-generated"]
    assert fm["task_categories"] == ["image-classification"]
    assert fm["source_datasets"] == ["builtin:digits-web"]
    assert fm["size_categories"] == [size_category(manifest["counts"]["kept"])]
    files = fm["configs"][0]["data_files"]
    assert files == [{"split": "train", "path": "data/train-*.parquet"}]
    assert sorted(p.relative_to(demo_run).as_posix() for p in demo_run.glob(files[0]["path"])) == \
        sorted(f["path"] for f in manifest["files"])

    k = fm["kdata"]
    c = manifest["counts"]
    assert k["counts"] == {key: c[key] for key in ("n_in", "kept", "rejected", "quarantined")}
    assert k["rejected_by_reason"] == c["rejected_by_reason"]
    assert k["config_hash"] == manifest["config_hash"]
    assert k["schema_version"] == manifest["schema_version"] and k["kdata_version"] == manifest["kdata_version"]
    assert k["teacher"] == {"id": "builtin:digits-teacher", "checksum": manifest["models"]["teacher"]["checksum"]}
    assert k["student"]["checksum"] == manifest["models"]["student"]["checksum"]
    assert k["methods"] == ["kd3"] and k["budget"] == {"spec": "0.3", "rows": manifest["budget_rows"]}
    assert k["seed"] == 0 and set(k["dedup"]) == {"method", "threshold", "frac"}
    assert [f["sha256"] for f in k["files"]] == [f["sha256"] for f in manifest["files"]]

    # the body's counts table says the same as the manifest
    def cell(label):
        m = re.search(rf"^\| {re.escape(label)} \| (\d+) \|$", text, re.M)
        assert m, label
        return int(m.group(1))
    assert cell("in (pool samples)") == c["n_in"]
    assert cell("**kept**") == c["kept"]
    assert cell("rejected (total)") == c["rejected"]
    assert cell("quarantined (unreadable)") == c["quarantined"]
    for reason, n in c["rejected_by_reason"].items():
        assert cell(f"rejected: `{reason}`") == n
    for section in ("## Summary", "## Sources", "## Curation recipe", "## Counts at each stage",
                    "## Class balance before and after", "## Score distributions",
                    "## Biases this selection can introduce", "## Intended and out-of-scope uses",
                    "## How to load", "kdata train .", "pd.read_parquet", "load_dataset", "report.html"):
        assert section in text, section
    # class balance: the kept column adds up to the kept rows
    kept_col = [int(m) for m in re.findall(r"^\| \S+ \| .* \| .* \| (\d+) \([\d.]+%\) \|$", text, re.M)]
    assert sum(kept_col) == c["kept"] and len(kept_col) == len(manifest["class_names"])


def test_card_plots_exist_open_as_png_and_are_recorded(demo_run):
    text = (demo_run / "README.md").read_text()
    links = _links(text)
    assert sorted(links) == sorted(["card-scores.png", "card-class-balance.png", "card-thumbnails.png"])
    for link in links:
        with Image.open(demo_run / link) as im:
            im.verify()
        with Image.open(demo_run / link) as im:
            assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 100
    manifest = json.loads((demo_run / "manifest.json").read_text())
    card = manifest["card"]
    assert card["path"] == "README.md"
    assert card["files"][0]["path"] == "README.md"
    assert sorted(f["path"] for f in card["files"][1:]) == sorted(links + ["report.html"])
    from kdata.core.atomic import sha256_file

    for f in card["files"]:
        assert sha256_file(demo_run / f["path"]) == f["sha256"]
    # the card files are not shards: readers of manifest["files"] see only Parquet
    assert all(f["path"].endswith(".parquet") for f in manifest["files"])


def test_regenerate_is_byte_identical_and_publishes(run_copy, tmp_path, capsys):
    before = {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()}
    cards = tmp_path / "data_cards"
    assert main(["card", str(run_copy), "--card-dir", str(cards)]) == 0
    assert "copied to" in capsys.readouterr().out
    after = {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()}
    assert after == before  # same card, same plots, same manifest
    published = cards / f"{run_copy.name}.md"
    text = published.read_text()
    assert read_front_matter(text)["kdata"]["counts"]["kept"] == json.loads(
        (run_copy / "manifest.json").read_text())["counts"]["kept"]
    for link in _links(text):  # links resolve inside the card directory
        assert link.startswith(f"{run_copy.name}-card-")
        with Image.open(cards / link) as im:
            im.verify()
    assert f"]({run_copy.name}-report.html)" in text and (cards / f"{run_copy.name}-report.html").stat().st_size


def test_card_regenerates_after_deletion_and_rejects_tampered_shards(run_copy, capsys):
    (run_copy / "README.md").unlink()
    for p in run_copy.glob("card-*.png"):
        p.unlink()
    assert main(["card", str(run_copy), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["files"][0] == "README.md" and (run_copy / "README.md").exists()
    assert res["files"][-1] == "report.html" and res["report"] == str(run_copy / "report.html")
    assert len(list(run_copy.glob("card-*.png"))) == 3
    shard = next((run_copy / "data").glob("*.parquet"))
    t = pq.read_table(shard)
    pq.write_table(t.slice(1), shard)  # a readable but different shard
    assert main(["card", str(run_copy)]) == 1
    err = capsys.readouterr().err
    assert "integrity check failed" in err and shard.name in err and len(err.strip().splitlines()) == 1
    assert main(["card", str(run_copy.parent / "nope")]) == 2


def test_card_never_deletes_a_file_it_did_not_write(run_copy, tmp_path, capsys):
    """The card's stale-plot cleanup trusts no path from the manifest: an entry naming a file outside the
    dataset is an integrity failure (nothing deleted), and a stale entry naming a file of the dataset
    that is not a card plot is left alone."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    manifest = json.loads((run_copy / "manifest.json").read_text())
    for path in (str(victim), "../victim.txt"):
        m = json.loads(json.dumps(manifest))
        m["card"]["files"].append({"path": path, "bytes": 8, "sha256": "x"})
        (run_copy / "manifest.json").write_text(json.dumps(m))
        assert main(["card", str(run_copy)]) == 1
        err = capsys.readouterr().err
        assert "does not name a file of the dataset's own folder" in err and victim.read_text() == "precious"
    (run_copy / "notes.md").write_text("mine")
    m = json.loads(json.dumps(manifest))
    m["card"]["files"].append({"path": "notes.md", "bytes": 4, "sha256": "x"})
    (run_copy / "manifest.json").write_text(json.dumps(m))
    assert main(["card", str(run_copy)]) == 0
    assert (run_copy / "notes.md").read_text() == "mine"


def test_card_says_so_when_the_pool_is_unreachable(run_copy):
    mpath = run_copy / "manifest.json"
    m = json.loads(mpath.read_text())
    m["config"]["pool"] = str(run_copy.parent / "moved-away.parquet")
    m.pop("card")
    mpath.write_text(json.dumps(m))
    regenerate(run_copy)
    text = (run_copy / "README.md").read_text()
    assert "not reachable" in text and "moved-away.parquet" in text
    with Image.open(run_copy / "card-thumbnails.png") as im:  # kept thumbnails come from the shards
        im.verify()
    assert json.loads(mpath.read_text())["card"]["files"][0]["path"] == "README.md"


def test_select_card_dir_copies_the_card(demo_run, tmp_path, capsys):
    out, cards = tmp_path / "kd3-100", tmp_path / "data_cards"
    assert main(["select", "--method", "kd3", "--budget", "100", "--out", str(out), "--device", "cpu",
                 "--card-dir", str(cards), "--quiet", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["info"]["card"] == str(cards / "kd3-100.md")
    fm = read_front_matter((cards / "kd3-100.md").read_text())
    assert fm["kdata"]["counts"]["kept"] == 100 == report["counts"]["kept"]
    assert read_front_matter((out / "README.md").read_text())["kdata"] == fm["kdata"]
    assert len(list(cards.glob("kd3-100-card-*.png"))) == 3


def test_datasets_loads_the_directory_through_the_card_configs(demo_run, tmp_path):
    import datasets  # a dev dependency
    ds = datasets.load_dataset(str(demo_run), split="train", cache_dir=str(tmp_path / "hf"))
    manifest = json.loads((demo_run / "manifest.json").read_text())
    assert ds.num_rows == manifest["counts"]["kept"]
    assert "teacher_topk_prob" in ds.column_names


@pytest.mark.parametrize("n,cat", [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (123_456, "100K<n<1M")])
def test_size_category(n, cat):
    assert size_category(n) == cat


def test_card_of_a_run_with_quarantined_rows(builtin_models, tmp_path, capsys):
    import pyarrow as pa

    from kdata.pools.spec import open_pool

    t = open_pool("builtin:digits-web").units[0].read().slice(0, 60)
    images = t.column("image").to_pylist()
    images[3], images[7] = b"not an image", None
    t = t.set_column(t.schema.get_field_index("image"), "image", pa.array(images, pa.binary()))
    pq.write_table(t, tmp_path / "pool.parquet")
    out = tmp_path / "q"
    assert main(["select", "--pool", str(tmp_path / "pool.parquet"), "--method", "kd3", "--budget", "20",
                 "--out", str(out), "--device", "cpu", "--quiet", "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)["counts"]
    text = (out / "README.md").read_text()
    assert read_front_matter(text)["kdata"]["counts"] == {k: counts[k] for k in ("n_in", "kept", "rejected",
                                                                                 "quarantined")}
    assert counts["quarantined"] == 2 and "| quarantined (unreadable) | 2 |" in text
    for i in (3, 7):
        assert f"`{t.column('sample_id')[i].as_py()}`:" in text  # listed with its error


def test_card_without_payload_has_no_thumbnails(tmp_path, capsys):
    """Bring-your-own predictions without a pool: no images, the card says so, ``--grid`` is a usage error."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(0)
    n = 50
    pq.write_table(pa.table({"sample_id": [f"s{i}" for i in range(n)],
                             "teacher_logits": (rng.normal(size=(n, 10)) * 3).tolist(),
                             "student_logits": rng.normal(size=(n, 10)).tolist()}), tmp_path / "preds.parquet")
    out = tmp_path / "byo"
    assert main(["select", "--scores", str(tmp_path / "preds.parquet"), "--method", "kd3", "--budget", "10",
                 "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    text = (out / "README.md").read_text()
    fm = read_front_matter(text)
    assert fm["task_categories"] == ["other"] and fm["kdata"]["counts"]["kept"] == 10
    assert "No thumbnails" in text and not (out / "card-thumbnails.png").exists()
    assert sorted(_links(text)) == ["card-class-balance.png", "card-scores.png"]
    assert main(["inspect", str(out), "--grid", str(tmp_path / "g.png")]) == 2
    assert "no image payload" in capsys.readouterr().err and not (tmp_path / "g.png").exists()


def test_card_of_many_classes_summarises_the_balance(tmp_path, capsys):
    """C = 300 classes: the balance table is a summary plus the classes that moved most, and the plot
    a fixed-size line plot (a bar per class made a 90,000-pixel-wide PNG at C = 1000)."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(1)
    n, c = 2000, 300
    t = rng.normal(size=(n, c)).astype(np.float32) * 3
    pq.write_table(pa.table({"sample_id": [f"s{i}" for i in range(n)], "teacher_logits": list(t),
                             "student_logits": list(t + rng.normal(size=(n, c)).astype(np.float32))}),
                   tmp_path / "preds.parquet")
    out = tmp_path / "many"
    assert main(["select", "--scores", str(tmp_path / "preds.parquet"), "--method", "rad", "--budget", "0.2",
                 "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    text = (out / "README.md").read_text()
    section = text.split("## Class balance before and after")[1].split("\n## ")[0]
    assert "300 classes. Share of kept rows per class" in section
    assert "The 40 classes whose share moved most" in section
    assert 40 <= sum(1 for line in section.splitlines() if line.startswith("| ") and "%" in line) <= 41
    with Image.open(out / "card-class-balance.png") as im:
        assert im.size[0] <= 1000 and im.size[1] <= 400
    assert main(["inspect", str(out)]) == 0  # the terminal table is cut the same way
    printed = " ".join(capsys.readouterr().out.split())
    assert "300 classes. Share of kept rows per class" in printed
    assert "The 40 classes whose share moved most" in printed


def _files(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_default_recipe_card_regenerates_byte_identically(rad_run, tmp_path, capsys):
    """RAD records several ``method_info`` keys in the order it computes them; manifest.json stores them
    sorted. The run's card and ``kdata card DIR``'s must still be the same bytes (report.html too)."""
    out = tmp_path / rad_run.name
    shutil.copytree(rad_run, out)
    info = json.loads((out / "manifest.json").read_text())["method_info"]["rad"]
    assert len(info) > 1
    before = _files(out)
    assert main(["card", str(out)]) == 0
    assert "report " in capsys.readouterr().out
    assert _files(out) == before
    (out / "README.md").unlink()
    (out / "report.html").unlink()
    regenerate(out)
    assert _files(out) == before


def test_thumbnails_show_best_ranked_and_a_random_sample_of_kept_rows_per_class(rad_run):
    from collections import Counter

    from kdata.report.card_plots import MAX_CLASSES, N_BEST, PER_CLASS, thumbnail_blocks
    from kdata.report.inspect import load_run

    run = load_run(rad_run)
    (_, best, _), (title, rnd, _), (_, rej, _) = thumbnail_blocks(run)
    rank = dict(zip(run.shards.column("sample_id").to_pylist(), run.shards.column("rank").to_pylist()))
    assert [r["rank"] for r in best] == list(range(N_BEST))
    assert "random" in title and all(r["sample_id"] in rank for r in rnd)  # kept rows ...
    assert not {r["sample_id"] for r in rnd} & {r["sample_id"] for r in best}  # ... not the best-ranked again
    per_class = Counter(r["teacher_pred"] for r in rnd)
    kept_classes = set(run.shards.column("teacher_pred").to_pylist())
    assert set(per_class) == kept_classes and len(kept_classes) <= MAX_CLASSES
    assert set(per_class.values()) == {PER_CLASS}
    ranks = sorted(rank[r["sample_id"]] for r in rnd)  # a sample over the whole kept set, not its top
    assert ranks[len(ranks) // 2] > len(rank) // 4 and ranks[-1] > len(rank) // 2
    assert {r["slot"] // PER_CLASS for r in rnd} == set(range(len(kept_classes)))  # one tile group per class
    # seeded: the same rows every time, other rows under another seed
    assert thumbnail_blocks(run)[1][1] == rnd
    run.manifest["seed"] = 1
    assert {r["sample_id"] for r in thumbnail_blocks(run)[1][1]} != {r["sample_id"] for r in rnd}
    decided = dict(zip(run.decisions.column("sample_id").to_pylist(), run.decisions.column("decision").to_pylist()))
    assert rej and all(decided[r["sample_id"]] == "rejected" for r in rej)
    text = (rad_run / "README.md").read_text()
    assert "random sample of the kept rows of each teacher-predicted class" in text
    with Image.open(rad_run / "card-thumbnails.png") as im:  # three blocks: 1 + 5 + 2 rows of tiles
        assert im.size[1] > 1000


def test_default_recipe_card_names_rad_not_kd3(rad_run, demo_run):
    def biases(d):
        return (d / "README.md").read_text().split("## Biases this selection can introduce")[1].split("\n## ")[0]

    rad, kd3 = biases(rad_run), biases(demo_run)
    assert "Selected with `rad`" in rad and "RAD keeps what the student finds confusing and the teacher is sure of" in rad
    assert "KD³" not in rad and "Balanced by class" in rad
    assert "KD³ prefers prototypical rows" in kd3 and "RAD" not in kd3 and "No balancing" in kd3
