"""Scoring throughput: the kdata pipeline against the bare teacher+student forward pass, same process.

Two cases, each printing samples/s and the ratio pipeline / bare (1.0 = the pipeline costs nothing
beyond the models' own forward passes):

* ``builtin``: ``builtin:digits-web`` (1,457 32×32 PNGs) with the built-in teacher and student,
  through ``kdata.scoring.score.score_table``.
* ``real``: a temporary ImageFolder of JPEGs cropped from scikit-learn's two sample photos (4
  classes), scored by a small randomly initialised open_clip ViT image tower used as a zero-shot
  teacher over the folder names, and a CNN student exported to ``.pt2`` — decoded by 2 DataLoader
  workers. Reported for ``score_table`` on the pool's bytes (decode + forward + statistics) and for
  ``score_pool`` end to end (read files, fingerprint, score, write the cache Parquet).

The bare baseline forwards the same pre-decoded tensors (decoded before the clock starts) with the
same batch size under ``torch.inference_mode``. Measurements alternate for ``--repeat`` rounds and
the best of each is kept, so a busy machine distorts the ratio less.

    python benchmarks/score.py            # both cases, 2,000 JPEGs
    python benchmarks/score.py --quick    # small run (400 JPEGs), for a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# The teacher: a ViT image tower small enough for a 2-core CPU, text tower only for the zero-shot head.
TINY_CLIP = {"embed_dim": 128,
             "vision_cfg": {"image_size": 96, "layers": 4, "width": 192, "patch_size": 16, "head_width": 64},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
CLASSES = ["china_sky", "china_ground", "flower_left", "flower_right"]


def make_jpeg_folder(root: Path, n: int, *, seed: int = 0) -> None:
    """``n`` JPEGs: random crops (96–320 px) of sklearn's sample photos, 4 classes by region."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # china.jpg, flower.jpg (427×640×3)
    rng = np.random.default_rng(seed)
    for c in CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        k = i % len(CLASSES)
        img = photos[0 if k < 2 else 1]
        h, w = img.shape[:2]
        size = int(rng.integers(96, 321))
        if k == 0:
            y0, x0 = int(rng.integers(0, h // 2 - size // 2 + 1)), int(rng.integers(0, w - size + 1))
        elif k == 1:
            y0, x0 = int(rng.integers(h // 2 - size // 2, h - size + 1)), int(rng.integers(0, w - size + 1))
        else:
            y0 = int(rng.integers(0, h - size + 1))
            x0 = int(rng.integers(0, w // 2 - size // 2 + 1)) if k == 2 else int(rng.integers(w // 2 - size // 2,
                                                                                             w - size + 1))
        crop = img[y0:y0 + size, x0:x0 + size]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        Image.fromarray(np.ascontiguousarray(crop)).save(root / CLASSES[k] / f"{i:06d}.jpg", quality=90)


def make_models(work: Path) -> tuple[str, str]:
    """Write the open_clip config + random weights, and an exported CNN student (.pt2)."""
    import open_clip

    from kdata.models.builtin import DigitsNet
    from kdata.models.files import export_model

    torch.manual_seed(0)
    cfg = work / "bench-clip.json"
    cfg.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(str(cfg))
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # "no pretrained weights": random init is the point here
    clip = open_clip.create_model("bench-clip", pretrained=None)
    torch.save(clip.state_dict(), work / "bench-clip.pt")
    student = DigitsNet((32, 64, 128), num_classes=len(CLASSES), in_ch=3)
    export_model(student, work / "student.pt2", input_size=(3, 64, 64), mean=(0.5,) * 3, std=(0.25,) * 3,
                 class_names=sorted(CLASSES))  # ImageFolder order: sorted folder names
    return f"open_clip:{cfg}:{work / 'bench-clip.pt'}", str(work / "student.pt2")


def bare_rate(images: list, teacher, student, *, batch_size: int) -> float:
    """Samples/s of teacher+student forward on tensors decoded before timing."""
    from kdata.models.images import decode_multi

    keys = list(dict.fromkeys([teacher.preprocess_key, student.preprocess_key]))
    t0 = time.perf_counter()
    dec = [decode_multi(b, keys) for b in images]
    bare_rate.decode_per_s = len(images) / (time.perf_counter() - t0)  # one core, for the GPU estimate
    batches = [{k: torch.stack([d[k] for d in dec[i:i + batch_size]]) for k in keys}
               for i in range(0, len(dec), batch_size)]
    with torch.inference_mode():
        teacher.forward(batches[0][teacher.preprocess_key][:8])
        student.forward(batches[0][student.preprocess_key][:8])
        t0 = time.perf_counter()
        for b in batches:
            teacher.forward(b[teacher.preprocess_key])
            student.forward(b[student.preprocess_key])
        dt = time.perf_counter() - t0
    return len(dec) / dt


def gflops_per_sample(model) -> float:
    """Forward FLOPs of one sample (torch's FLOP counter: matmuls and convolutions), in GFLOP."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros((1, *model.input_size))
    # grad mode on: in inference mode nn.MultiheadAttention takes a fused fast path the counter misses
    with torch.enable_grad(), FlopCounterMode(display=False) as fc:
        model.forward(x)
    return fc.get_total_flops() / 1e9


def table_rate(tables: list, teacher, student, *, batch_size: int, workers: int) -> tuple[float, int]:
    from kdata.scoring.score import ScoreConfig, score_table

    cfg = ScoreConfig(batch_size=batch_size, num_workers=workers)
    t0 = time.perf_counter()
    n = q = 0
    for t in tables:
        scores, quarantined = score_table(t, teacher, student, config=cfg)
        n += scores.num_rows + len(quarantined)
        q += len(quarantined)
    return n / (time.perf_counter() - t0), q


def case_builtin(*, batch_size: int, workers: int, repeat: int) -> dict:
    from kdata.models.spec import load_model
    from kdata.pools.spec import open_pool

    teacher, student = load_model("builtin:digits-teacher"), load_model("builtin:digits-student")
    tables = [u.read() for u in open_pool("builtin:digits-web").units]
    images = [b for t in tables for b in t.column("image").to_pylist()]
    bare = pipe = 0.0
    for _ in range(repeat):  # alternate and keep the best of each: load on a shared box only slows runs down
        bare = max(bare, bare_rate(images, teacher, student, batch_size=batch_size))
        pipe = max(pipe, table_rate(tables, teacher, student, batch_size=batch_size, workers=workers)[0])
    return {"case": "builtin", "n": len(images), "workers": workers, "bare_per_s": bare, "pipeline_per_s": pipe,
            "ratio": pipe / bare}


def case_real(*, n: int, batch_size: int, workers: int, repeat: int) -> dict:
    from kdata.models.files import pool_class_names
    from kdata.models.spec import load_model
    from kdata.pools.spec import open_pool
    from kdata.scoring.score import ScoreConfig, score_pool

    with tempfile.TemporaryDirectory(prefix="kdata-bench-") as tmp:
        work = Path(tmp)
        os.environ["KDATA_CACHE"] = str(work / "cache")
        t0 = time.perf_counter()
        make_jpeg_folder(work / "pool", n)
        t_spec, s_spec = make_models(work)
        pool = open_pool(str(work / "pool"))
        with pool_class_names(pool.class_names):
            teacher, student = load_model(t_spec), load_model(s_spec)
        setup = time.perf_counter() - t0
        tables = [u.read() for u in pool.units]
        images = [b for t in tables for b in t.column("image").to_pylist()]
        nbytes = sum(len(b) for b in images)
        bare = pipe = full = 0.0
        for _ in range(repeat):  # alternate the three and keep the best of each (timeit's rule)
            bare = max(bare, bare_rate(images, teacher, student, batch_size=batch_size))
            rate, q = table_rate(tables, teacher, student, batch_size=batch_size, workers=workers)
            pipe = max(pipe, rate)
            t1 = time.perf_counter()
            scores, quarantined, _ = score_pool(pool, teacher, student,
                                                config=ScoreConfig(batch_size=batch_size, num_workers=workers),
                                                cache=False)
            full = max(full, (scores.num_rows + len(quarantined)) / (time.perf_counter() - t1))
        tp = sum(p.numel() for p in teacher.module.parameters())
        sp = sum(p.numel() for p in student.module.parameters()) if list(student.module.parameters()) else None
        return {"case": "real", "n": len(images), "mean_jpeg_kb": nbytes / len(images) / 1024, "workers": workers,
                "gflops_per_sample": {"teacher": gflops_per_sample(teacher), "student": gflops_per_sample(student)},
                "decode_per_s_one_core": bare_rate.decode_per_s,
                "teacher": f"open_clip ViT {TINY_CLIP['vision_cfg']} ({tp:,} params incl. zero-shot head)",
                "student": f"DigitsNet(32,64,128) 3x64x64 .pt2 ({sp} params)" if sp else "DigitsNet .pt2",
                "bare_per_s": bare, "pipeline_per_s": pipe, "ratio": pipe / bare, "quarantined": q,
                "score_pool_per_s": full, "score_pool_ratio": full / bare, "setup_s": setup}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small run: 400 JPEGs")
    ap.add_argument("--n", type=int, default=2000, help="JPEGs in the real-image case (default 2000)")
    ap.add_argument("--workers", type=int, default=2, help="decode workers in the real-image case")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--case", choices=["all", "builtin", "real"], default="all")
    ap.add_argument("--repeat", type=int, default=2, help="alternating rounds; the best of each is kept")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    n = 400 if args.quick else args.n
    results = []
    if args.case in ("all", "builtin"):
        results.append(case_builtin(batch_size=args.batch_size, workers=0, repeat=args.repeat))
    if args.case in ("all", "real"):
        results.append(case_real(n=n, batch_size=args.batch_size, workers=args.workers, repeat=args.repeat))
    for r in results:
        if args.json:
            print(json.dumps(r))
            continue
        print(f"[{r['case']}] {r['n']} samples, {r['workers']} decode worker(s), best of {args.repeat}")
        if r["case"] == "real":
            g = r["gflops_per_sample"]
            print(f"  teacher {r['teacher']}\n  student {r['student']}\n  mean JPEG {r['mean_jpeg_kb']:.1f} KiB")
            print(f"  forward GFLOP/sample: teacher {g['teacher']:.3f}  student {g['student']:.3f}; "
                  f"decode+preprocess {r['decode_per_s_one_core']:.0f} images/s on one core")
        print(f"  bare forward (pre-decoded)   {r['bare_per_s']:9.1f} samples/s")
        print(f"  pipeline score_table         {r['pipeline_per_s']:9.1f} samples/s   ratio {r['ratio']:.2f}")
        if "score_pool_per_s" in r:
            print(f"  pipeline score_pool (files)  {r['score_pool_per_s']:9.1f} samples/s   "
                  f"ratio {r['score_pool_ratio']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
