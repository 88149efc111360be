"""Scoring real inputs: a tiny random open_clip zero-shot teacher (shapes, determinism, head math),
the embedder, bit-identical scores across runs and worker counts, and ``kdata select`` on an
ImageFolder, a WebDataset tar and a Parquet pool."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from kdata.cli import main
from kdata.core.errors import KdataError
from kdata.models.embedder import embedder
from kdata.models.files import TEMPLATES, pool_class_names
from kdata.models.spec import load_model
from kdata.pools.spec import open_pool
from kdata.models.images import decode_image
from kdata.scoring.score import ScoreConfig, score_table

from tests.helpers.real_inputs import TINY_CLIP, digits, exported_models, make_image_folder, make_tar, png_bytes, tiny_clip

NAMES = ["cat", "dog", "sea_turtle"]


def _clip_spec():
    cfg, ckpt = tiny_clip()
    return f"open_clip:{cfg}:{ckpt}"


def _rgb_batch(n, size=32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, size, size, generator=g)


def test_open_clip_zero_shot_shapes_and_head_math():
    import open_clip

    with pool_class_names(NAMES):
        model = load_model(_clip_spec())
    assert model.class_names == NAMES and model.input_size == (3, 32, 32)
    x = _rgb_batch(5)
    with torch.inference_mode():
        logits, feats = model.forward(x)
    assert logits.shape == (5, 3) and feats.shape == (5, TINY_CLIP["embed_dim"])
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(5))
    # recompute the zero-shot head independently from the raw open_clip model
    cfg, ckpt = tiny_clip()
    raw = open_clip.create_model("kdata-tiny-clip", pretrained=ckpt).eval()
    tok = open_clip.get_tokenizer("kdata-tiny-clip")
    with torch.inference_mode():
        img = F.normalize(raw.encode_image(x), dim=-1)
        rows = []
        for name in NAMES:
            t = F.normalize(raw.encode_text(tok([tpl.format(name.replace("_", " ")) for tpl in TEMPLATES])), dim=-1)
            rows.append(F.normalize(t.mean(0), dim=-1))
        want = raw.logit_scale.exp() * img @ torch.stack(rows).t()
    torch.testing.assert_close(feats, img, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-5)


def test_open_clip_is_deterministic_and_checksummed():
    spec = _clip_spec()
    x = _rgb_batch(4)
    with pool_class_names(NAMES):
        a, b = load_model(spec), load_model(spec)
    with torch.inference_mode():
        la, fa = a.forward(x)
        lb, fb = b.forward(x)
    assert torch.equal(la, lb) and torch.equal(fa, fb)
    assert a.checksum == b.checksum
    with pool_class_names(NAMES[:2]):
        assert load_model(spec).checksum != a.checksum  # the head depends on the class names


def test_open_clip_class_names_from_sidecar_and_errors(tmp_path):
    import shutil

    cfg, ckpt = tiny_clip()
    mine = tmp_path / "w.pt"
    shutil.copy(ckpt, mine)
    with pytest.raises(KdataError, match="zero-shot teacher needs class names"):
        load_model(f"open_clip:{cfg}:{mine}")
    (tmp_path / "w.json").write_text(json.dumps({"class_names": ["x", "y"], "templates": ["an image of {}"]}))
    with pool_class_names(NAMES):
        m = load_model(f"open_clip:{cfg}:{mine}")
    assert m.class_names == ["x", "y"] and m.extra["templates"] == ["an image of {}"]
    with pytest.raises(KdataError, match="checkpoint .*missing.pt not found"):
        load_model(f"open_clip:{cfg}:{tmp_path / 'missing.pt'}")
    with pytest.raises(KdataError, match="unknown open_clip architecture"):
        load_model(f"open_clip:NoSuchArch:{mine}")
    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(KdataError, match="cannot load"):
        load_model(f"open_clip:{cfg}:{tmp_path / 'bad.pt'}")


def test_embedder_matches_teacher_features():
    spec = _clip_spec()
    emb = embedder(spec)
    assert emb.dim == TINY_CLIP["embed_dim"]
    x = _rgb_batch(3)
    with pool_class_names(NAMES):
        teacher = load_model(spec)
    with torch.inference_mode():
        assert torch.equal(emb(x), teacher.forward(x)[1])
    imgs = [png_bytes(a) for a in digits(4)[0]] + [b"broken"]
    vecs, rows, bad = emb.embed_images(imgs, batch_size=2)
    assert vecs.shape == (4, emb.dim) and rows.tolist() == [0, 1, 2, 3] and bad[0][0] == 4
    m = exported_models()
    assert embedder(m["teacher_pt2"]).dim == 32
    with pytest.raises(KdataError, match="exposes no features"):
        lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32, 2)).eval()
        from kdata.models.files import export_model

        path = export_model(lin, m["teacher_pt2"].replace("teacher_pt2", "linear"), input_size=(1, 32, 32),
                            mean=(0.5,), std=(0.5,), class_names=["a", "b"])
        embedder(str(path))


def _scores(pool_table, teacher, student, workers):
    scores, q = score_table(pool_table, teacher, student, config=ScoreConfig(batch_size=16, num_workers=workers))
    return scores, q


def test_scores_bit_identical_across_runs_and_workers(tmp_path):
    m = exported_models()
    root = make_image_folder(tmp_path / "pool", n=40, corrupt=True)
    table = open_pool(str(root)).read_all()
    runs = []
    for workers in (0, 2, 0):
        teacher, student = load_model(m["teacher_pt2"]), load_model(m["student_pt"])  # fresh loads each run
        runs.append(_scores(table, teacher, student, workers))
    (s0, q0), (s2, q2), (s0b, q0b) = runs
    assert s0.num_rows == 40 and len(q0) == 3
    assert s0.equals(s0b) and s0.equals(s2)  # bit-for-bit: same floats, same order
    assert q0 == q2 == q0b
    # decoding itself is deterministic too, including the reduced-scale JPEG path
    jpg = png_bytes(np.tile(digits(1)[0][0], (4, 4)), "JPEG")  # 128x128 → 16x16: DCT-scaled decode
    a = decode_image(jpg, input_size=(3, 16, 16), mean=(0.5,) * 3, std=(0.5,) * 3)
    assert torch.equal(a, decode_image(jpg, input_size=(3, 16, 16), mean=(0.5,) * 3, std=(0.5,) * 3))


def test_open_clip_teacher_scores_image_folder_via_cli(tmp_path, capsys):
    """Zero-shot teacher over the folder names + an exported student with the same classes."""
    from kdata.models.files import export_model
    from kdata.models.builtin import DigitsNet

    x, y = digits(24)
    root = tmp_path / "pool"
    for i in range(24):
        d = root / NAMES[i % 3]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i}.jpg").write_bytes(png_bytes(x[i], "JPEG"))
    torch.manual_seed(0)
    student = export_model(DigitsNet((4, 8, 8), num_classes=3, in_ch=3).eval(), tmp_path / "s.pt2",
                           input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.5,) * 3, class_names=sorted(NAMES))
    out = tmp_path / "o"
    code = main(["select", "--pool", str(root), "--teacher", _clip_spec(), "--student", str(student),
                 "--method", "kd3", "--budget", "12", "--workers", "2", "--device", "cpu", "--out", str(out),
                 "--json"])
    assert code == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    assert report["counts"]["kept"] == 12
    shards = pq.read_table(out / "data" / "train-00000-of-00001.parquet")
    assert set(shards.column("label").to_pylist()) <= set(NAMES)
    assert json.loads((out / "manifest.json").read_text())["class_names"] == sorted(NAMES)


def test_select_on_webdataset_tar_and_parquet(tmp_path, capsys):
    m = exported_models()
    x, y = digits(30)
    tar = make_tar(tmp_path / "pool.tar", [(f"s{i:02d}", str(y[i]), png_bytes(x[i])) for i in range(30)]
                   + [("bad", "3", b"corrupt bytes")])
    (tmp_path / "pq").mkdir()
    pq.write_table(pa.table({"image": [png_bytes(a) for a in x], "label": [str(v) for v in y]}),
                   tmp_path / "pq" / "pool.parquet")
    for spec, n_in, q in ((str(tar), 31, 1), (str(tmp_path / "pq"), 30, 0)):
        out = tmp_path / f"o-{n_in}"
        code = main(["select", "--pool", spec, "--teacher", m["teacher_pt"], "--student", m["student_pt2"],
                     "--method", "kd3", "--budget", "10", "--device", "cpu", "--out", str(out), "--json"])
        assert code == 0
        c = json.loads(capsys.readouterr().out)["counts"]
        assert (c["n_in"], c["kept"], c["quarantined"]) == (n_in, 10, q)
        ids = pq.read_table(out / "decisions.parquet").column("sample_id").to_pylist()
        assert ("bad" in ids) == (q == 1) and len(ids) == n_in


def test_a_copied_pool_file_is_scored_under_its_own_sample_ids(tmp_path, builtin_models, capsys):
    """Default ids are made from the file name (``pool.parquet:3``): a copy under another name has the
    same content, but its cached scores must not carry the first file's ids."""
    x, y = digits(24)
    table = pa.table({"image": [png_bytes(a) for a in x], "label": [str(v) for v in y]})
    first, copy = tmp_path / "first.parquet", tmp_path / "copy.parquet"
    pq.write_table(table, first)
    pq.write_table(table, copy)
    for pool in (first, copy):
        out = tmp_path / f"out-{pool.stem}"
        assert main(["select", "--pool", str(pool), "--method", "random", "--budget", "8", "--device", "cpu",
                     "--out", str(out), "--quiet", "--json"]) == 0, capsys.readouterr().err
        ids = pq.read_table(out / "decisions.parquet").column("sample_id").to_pylist()
        assert len(ids) == 24 and all(i.startswith(f"{pool.name}:") for i in ids)
    capsys.readouterr()
