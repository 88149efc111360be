"""Pool readers: ImageFolder, flat folder + labels.csv, Parquet (with/without sample_id), WebDataset
tars; units, fingerprints, ids; corrupt files quarantined end to end through ``kdata select``."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdata.cli import main
from kdata.core.errors import KdataError
from kdata.pools.readers import has_images, open_image_folder
from kdata.pools.spec import open_pool

from tests.helpers.real_inputs import digits, make_image_folder, make_tar, png_bytes


def test_image_folder_ids_labels_and_classes(tmp_path):
    root = make_image_folder(tmp_path / "pool", n=30)
    (root / "notes.txt").write_text("not an image")  # ignored
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.png").write_bytes(png_bytes(digits(1)[0][0]))  # hidden: ignored
    pool = open_pool(str(root))
    t = pool.read_all()
    assert t.num_rows == 30
    ids = t.column("sample_id").to_pylist()
    assert len(set(ids)) == 30 and all("/" in i for i in ids)
    for sid, label, img in zip(ids, t.column("label").to_pylist(), t.column("image").to_pylist()):
        assert label == sid.split("/")[0]  # folder name is the web label
        assert img == (root / sid).read_bytes()  # sample_id is the path relative to POOL
    assert pool.class_names == sorted({i.split("/")[0] for i in ids})
    assert set(t.column("kind").to_pylist()) == {"original"}


def test_identical_bytes_are_two_samples(tmp_path):
    root = tmp_path / "pool"
    (root / "a").mkdir(parents=True)
    data = png_bytes(digits(1)[0][0])
    (root / "a" / "x.png").write_bytes(data)
    (root / "a" / "y.png").write_bytes(data)
    t = open_pool(str(root)).read_all()
    assert sorted(t.column("sample_id").to_pylist()) == ["a/x.png", "a/y.png"]


def test_units_are_bounded_and_fingerprints_track_content(tmp_path):
    root = make_image_folder(tmp_path / "pool", n=40)
    pool = open_image_folder(str(root), unit_files=7)
    assert [len(u.read()) for u in pool.units] == [7] * 5 + [5]
    ids = [i for u in pool.units for i in u.read().column("sample_id").to_pylist()]
    assert ids == sorted(ids) and len(set(ids)) == 40
    fp = [u.fingerprint() for u in pool.units]
    assert fp == [u.fingerprint() for u in open_image_folder(str(root), unit_files=7).units]
    # change the bytes of one file: only its unit's fingerprint changes
    victim = pool.units[2].read().column("sample_id")[0].as_py()
    (root / victim).write_bytes(png_bytes(digits(1, offset=100)[0][0]))
    fp2 = [u.fingerprint() for u in open_image_folder(str(root), unit_files=7).units]
    assert [a != b for a, b in zip(fp, fp2)] == [False, False, True, False, False, False]


def test_folder_units_are_cut_by_content_so_an_early_insert_rescores_one_unit(tmp_path):
    """By default a folder's unit boundaries are content-defined (about 1,000 files each): a new image
    in the first class folder changes the fingerprint of the unit that takes it and no other, where
    fixed runs of 1,000 files would move every later boundary."""
    root = tmp_path / "pool"
    data = png_bytes(digits(1)[0][0])
    for c in range(4):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(900):
            (root / f"class{c}" / f"img{i:04d}.png").write_bytes(data)
    pool = open_pool(str(root))
    sizes = [len(u.read()) for u in pool.units]
    assert len(sizes) >= 2 and sum(sizes) == 3600 and all(250 <= n <= 4000 for n in sizes[:-1])
    ids = [i for u in pool.units for i in u.read().column("sample_id").to_pylist()]
    assert ids == sorted(ids) and len(set(ids)) == 3600
    before = {u.fingerprint() for u in pool.units}
    fixed_before = {u.fingerprint() for u in open_image_folder(str(root), unit_files=1000).units}
    (root / "class0" / "img0000a.png").write_bytes(data)  # sorts second
    after = [u.fingerprint() for u in open_pool(str(root)).units]
    assert len([f for f in after if f not in before]) == 1 and len(after) == len(before)
    fixed_after = [u.fingerprint() for u in open_image_folder(str(root), unit_files=1000).units]
    assert len([f for f in fixed_after if f not in fixed_before]) == 4  # every fixed unit moved


def test_flat_folder_with_labels_csv(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    x, y = digits(6)
    for i in range(6):
        (root / f"img{i}.png").write_bytes(png_bytes(x[i]))
    (root / "labels.csv").write_text("file,label\n" + "".join(f"img{i}.png,{y[i]}\n" for i in range(5)))
    pool = open_pool(str(root))
    t = pool.read_all()
    labels = dict(zip(t.column("sample_id").to_pylist(), t.column("label").to_pylist()))
    assert labels == {**{f"img{i}.png": str(y[i]) for i in range(5)}, "img5.png": None}
    assert pool.class_names == sorted({str(v) for v in y[:5]})
    # a labels.csv row for a file that is not there is an error naming the file
    (root / "labels.csv").write_text("file,label\nimg0.png,1\nmissing.png,2\n")
    with pytest.raises(KdataError, match="labels.csv.*missing.png"):
        open_pool(str(root))
    (root / "labels.csv").write_text("name;label\nimg0.png;1\n")
    with pytest.raises(KdataError, match="labels.csv: expected a header line 'file,label'"):
        open_pool(str(root))


def test_flat_folder_without_labels(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    (root / "a.png").write_bytes(png_bytes(digits(1)[0][0]))
    pool = open_pool(str(root))
    assert pool.class_names is None
    assert pool.read_all().column("label").to_pylist() == [None]


@pytest.mark.parametrize("with_ids", [True, False])
def test_parquet_pool_with_and_without_sample_id(tmp_path, with_ids):
    x, y = digits(5)
    cols = {"image": [png_bytes(a) for a in x], "label": [str(v) for v in y], "domain": ["web"] * 5}
    if with_ids:
        cols = {"sample_id": [f"s{i}" for i in range(5)], **cols}
    (tmp_path / "p").mkdir()
    pq.write_table(pa.table(cols), tmp_path / "p" / "part.parquet")
    t = open_pool(str(tmp_path / "p")).read_all()
    expect = [f"s{i}" for i in range(5)] if with_ids else [f"part.parquet:{i}" for i in range(5)]
    assert t.column("sample_id").to_pylist() == expect
    assert t.column("label").to_pylist() == [str(v) for v in y]


def test_webdataset_tar_file_brace_and_directory(tmp_path):
    x, y = digits(8)
    shards = tmp_path / "shards"
    shards.mkdir()
    make_tar(shards / "data-000.tar", [(f"k{i:03d}", str(y[i]), png_bytes(x[i])) for i in range(5)])
    make_tar(shards / "data-001.tar", [(f"k{i:03d}", str(y[i]), png_bytes(x[i])) for i in range(5, 8)]
             + [("noimage", "1", None), ("nolabel", None, png_bytes(x[0]))])
    one = open_pool(str(shards / "data-000.tar")).read_all()
    assert one.column("sample_id").to_pylist() == [f"k{i:03d}" for i in range(5)]  # sample_id = key
    assert one.column("label").to_pylist() == [str(v) for v in y[:5]]
    assert one.column("image").to_pylist()[2] == png_bytes(x[2])
    for spec in (str(shards / "data-{000..001}.tar"), str(shards)):
        pool = open_pool(spec)
        assert len(pool.units) == 2
        t = pool.read_all()
        assert t.num_rows == 10
        rows = {r["sample_id"]: r for r in t.to_pylist()}
        assert rows["noimage"]["image"] is None and rows["nolabel"]["label"] is None
    with pytest.raises(KdataError, match="data-002.tar"):
        open_pool(str(shards / "data-{000..002}.tar"))
    (shards / "broken.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(KdataError, match="broken.tar: cannot read tar shard"):
        open_pool(str(shards / "broken.tar")).read_all()


def test_corrupt_files_quarantined_end_to_end(tmp_path, builtin_models, capsys):
    root = make_image_folder(tmp_path / "pool", n=30, corrupt=True)
    out = tmp_path / "out"
    code = main(["select", "--pool", str(root), "--method", "kd3", "--budget", "10", "--workers", "2",
                 "--device", "cpu", "--out", str(out), "--json", "--quiet"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    c = report["counts"]
    assert (c["n_in"], c["kept"], c["quarantined"]) == (33, 10, 3)
    assert c["n_in"] == c["kept"] + c["rejected"] + c["quarantined"]
    assert main(["inspect", str(out), "--json"]) == 0
    listed = {q["sample_id"]: q["error"] for q in json.loads(capsys.readouterr().out)["quarantined"]}
    assert set(listed) == {"3/garbage.jpg", "3/truncated.jpg", "7/empty.png"}
    assert "empty image" in listed["7/empty.png"]
    assert "truncated" in listed["3/truncated.jpg"].lower()
    assert "0x" not in listed["3/garbage.jpg"]  # stable message, no memory address
    dec = pq.read_table(out / "decisions.parquet").to_pylist()
    assert {d["sample_id"] for d in dec if d["decision"] == "quarantined"} == set(listed)
    assert all(d["error"] for d in dec if d["decision"] == "quarantined")


def test_a_folder_of_images_and_parquet_files_is_refused_naming_both(tmp_path, demo_run):
    root = make_image_folder(tmp_path / "pool", n=12)
    stray = root / "3" / "extra.parquet"
    pq.write_table(pa.table({"image": [png_bytes(digits(1)[0][0])], "label": ["3"]}), stray)
    with pytest.raises(KdataError, match="holds image files and Parquet files") as err:
        open_pool(str(root))
    assert str(stray) in str(err.value)
    # a kdata dataset (its card PNGs beside its shards) still reads as Parquet: its manifest lists the shards
    assert list(demo_run.glob("card-*.png"))
    kept = json.loads((demo_run / "manifest.json").read_text())["counts"]["kept"]
    assert open_pool(str(demo_run)).read_all().num_rows == kept


def test_out_inside_the_pool_is_refused_before_any_work(tmp_path, builtin_models, capsys):
    root = make_image_folder(tmp_path / "pool", n=12)
    code = main(["select", "--pool", str(root), "--budget", "4", "--device", "cpu",
                 "--out", str(root / "3" / "curated"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "lies inside the pool" in err
    assert not (root / "3" / "curated").exists()
    assert open_pool(str(root)).read_all().num_rows == 12  # the pool still reads as images


def test_the_summary_names_the_commonest_quarantine_errors(tmp_path, builtin_models, capsys):
    root = make_image_folder(tmp_path / "pool", n=12, corrupt=True)
    assert main(["select", "--pool", str(root), "--method", "random", "--budget", "4", "--device", "cpu",
                 "--out", str(tmp_path / "o"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "quarantined 3" in out and "    quarantined ValueError: empty image: 1" in out
    assert out.count("    quarantined ") == 3  # one line per kind of error, three kinds


def test_has_images_steps_over_symlink_loops(tmp_path):
    root = tmp_path / "pool"
    (root / "3").mkdir(parents=True)
    (root / "3" / "x.png").symlink_to("x.png")  # ELOOP when followed
    (root / "z").symlink_to("z")
    assert not has_images(root / "3") and not has_images(root)
    (root / "4").mkdir()
    (root / "4" / "a.png").write_bytes(png_bytes(digits(1)[0][0]))
    assert has_images(root)


def test_symlink_loops_in_an_image_folder_are_quarantined_and_the_run_goes_on(tmp_path, builtin_models, capsys):
    root = make_image_folder(tmp_path / "pool", n=12)
    (root / "3" / "x.png").symlink_to("x.png")
    (root / "y.png").symlink_to("y.png")  # at the top level: probed before any folder
    (root / "z").symlink_to("z")  # a looping "folder"
    out = tmp_path / "out"
    assert main(["select", "--pool", str(root), "--method", "kd3", "--budget", "0.5", "--device", "cpu",
                 "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    dec = {d["sample_id"]: d for d in pq.read_table(out / "decisions.parquet").to_pylist()}
    assert len(dec) == 14
    for sid in ("3/x.png", "y.png"):
        assert dec[sid]["decision"] == "quarantined"
        assert "cannot read" in dec[sid]["error"] and "symbolic links" in dec[sid]["error"]
    assert sum(d["decision"] == "quarantined" for d in dec.values()) == 2
