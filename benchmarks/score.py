"""Scoring throughput against its two limits: the bare forward pass and the decode capacity.

The pipeline (``kdata.scoring.score.score_pool``: read files, fingerprint, decode, forward,
statistics, write the per-unit cache) cannot beat the slower of

* **bare forward**: teacher + student on pre-decoded tensors already on the device, same batch
  size, precision and memory format as the pipeline;
* **decode capacity**: workers × what one core decodes and preprocesses per second (0 workers:
  one core, in the scoring process) — and, on CUDA, the batched nvJPEG decode + preprocessing rate
  on the GPU, which is what JPEGs go through there.

It prints both, the pipeline's samples/s over a JPEG image folder cut into ≥ 3 units (one decode
pipeline serves them all), and the ratio pipeline / min(bare, decode capacity). Rounds alternate
and the best of each is kept (timeit's rule); because a shared machine's speed can swing within
seconds, the ratio is also given per round against the bare forward timed right before and
right after that round's pipeline (median and best of the rounds).

The JPEGs are crops of scikit-learn's two sample photos (4 classes by region). The teacher is an
open_clip image tower used as a zero-shot classifier over the folder names, randomly initialised
(``--teacher-arch``: ``bench-clip``, a 4-layer ViT at 96 px small enough for a 2-core CPU, or any
open_clip architecture such as ``ViT-B-32``); the student is exported to ``.pt2``
(``--student-arch``: ``digitsnet``, a small CNN at 64 px, or a timm architecture such as
``resnet18`` at its own input size). Nothing is downloaded.

    python benchmarks/score.py --quick --workers 2          # 400 JPEGs, 3 units
    python benchmarks/score.py                              # built-in digits + 2,000 JPEGs in 4 units
    python benchmarks/score.py --device cuda --teacher-arch ViT-B-32 --student-arch resnet18 \\
        --n 12000 --sizes 224,400 --batch-size 256 --workers auto

A CPU run of the default JPEG case (default models, 2,000 JPEGs of 96–320 px in 4 units, batch 128;
any ``--workers``/``--repeat``) splices its figures into ``docs/benchmarks/score.md``
(``benchmarks/doc_tables.py``) unless ``--no-write``; ``--quick``, other sizes or models, and CUDA runs
only print (the page quotes the GPU figures apart, with their command).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import runpy
import shlex
import sys
import tempfile
import time
from pathlib import Path

# OpenMP threads that spin while they wait hold their cores against the decode workers, and a
# worker that preempts one of them leaves the other spinning: measured here, passive waiting lifts
# the pipeline from about 0.65 to about 0.8 of the bare forward on 2 cores. Set before torch loads
# OpenMP; it applies to the bare forward too. OMP_WAIT_POLICY=ACTIVE in the environment overrides
# it; OMP_WAIT_POLICY=default leaves the variable unset (OpenMP's own default).
if os.environ.get("OMP_WAIT_POLICY") == "default":
    del os.environ["OMP_WAIT_POLICY"]
else:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

# The default teacher: a ViT image tower small enough for a 2-core CPU, text tower only for the zero-shot head.
TINY_CLIP = {"embed_dim": 128,
             "vision_cfg": {"image_size": 96, "layers": 4, "width": 192, "patch_size": 16, "head_width": 64},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
CLASSES = ["china_sky", "china_ground", "flower_left", "flower_right"]


def make_jpeg_folder(root: Path, n: int, *, sizes: tuple[int, int] = (96, 320), distinct: int = 4000,
                     seed: int = 0) -> None:
    """``n`` JPEGs: random square crops (``sizes`` px) of sklearn's sample photos, 4 classes by region.

    Beyond ``distinct`` images (a multiple of 4) the files repeat earlier ones of their class byte for
    byte, under their own names: a large pool is written in seconds, and every file still costs a
    full read, hash and decode."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # china.jpg, flower.jpg (427×640×3)
    rng = np.random.default_rng(seed)
    for c in CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)

    def path(i: int) -> Path:
        return root / CLASSES[i % len(CLASSES)] / f"{i:06d}.jpg"

    for i in range(min(n, distinct)):
        k = i % len(CLASSES)
        img = photos[0 if k < 2 else 1]
        h, w = img.shape[:2]
        size = int(rng.integers(sizes[0], min(sizes[1], h) + 1))
        half_h, half_w = max(0, h // 2 - size // 2), max(0, w // 2 - size // 2)
        if k < 2:  # sky: upper half, ground: lower half (overlapping when the crop is large)
            y0 = int(rng.integers(0, min(half_h, h - size) + 1)) if k == 0 else \
                int(rng.integers(min(half_h, h - size), h - size + 1))
            x0 = int(rng.integers(0, w - size + 1))
        else:  # flower: left or right half
            y0 = int(rng.integers(0, h - size + 1))
            x0 = int(rng.integers(0, min(half_w, w - size) + 1)) if k == 2 else \
                int(rng.integers(min(half_w, w - size), w - size + 1))
        crop = img[y0:y0 + size, x0:x0 + size]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        Image.fromarray(np.ascontiguousarray(crop)).save(path(i), quality=90)
    for i in range(distinct, n):
        path(i).write_bytes(path(i % distinct).read_bytes())


def make_teacher(work: Path, arch: str) -> str:
    """An open_clip model with random weights saved locally → its ``open_clip:`` spec."""
    import open_clip

    torch.manual_seed(0)
    logging.getLogger().setLevel(logging.ERROR)  # "no pretrained weights": random init is the point here
    if arch == "bench-clip":
        cfg = work / "bench-clip.json"
        cfg.write_text(json.dumps(TINY_CLIP))
        open_clip.add_model_config(str(cfg))
        name, spec_arch = "bench-clip", str(cfg)
    else:
        name, spec_arch = arch, arch
    clip = open_clip.create_model(name, pretrained=None)
    weights = work / f"{name}-random.pt"
    torch.save(clip.state_dict(), weights)
    return f"open_clip:{spec_arch}:{weights}"


def make_student(work: Path, arch: str) -> str:
    """A student exported to ``.pt2``: the small DigitsNet at 64 px, or a timm architecture at its input size."""
    from kdata.models.files import export_model

    torch.manual_seed(0)
    names = sorted(CLASSES)  # ImageFolder order: sorted folder names
    if arch == "digitsnet":
        from kdata.models.builtin import DigitsNet

        net, size, mean, std = DigitsNet((32, 64, 128), num_classes=len(CLASSES), in_ch=3), (3, 64, 64), (0.5,) * 3, (0.25,) * 3
    else:
        import timm

        net = timm.create_model(arch, pretrained=False, num_classes=len(CLASSES))
        cfg = net.pretrained_cfg
        size, mean, std = tuple(cfg["input_size"]), tuple(cfg["mean"]), tuple(cfg["std"])
    return str(export_model(net.eval(), work / f"student-{arch}.pt2", input_size=size, mean=mean, std=std,
                            class_names=names))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def predecode(images: list, keys: list, *, batch_size: int, device: torch.device) -> list[dict]:
    """Model-ready batches on the device, decoded before any clock starts (the bare forward's input)."""
    from kdata.models.images import decode_multi

    dec = [decode_multi(b, keys) for b in images]
    batches = [{k: torch.stack([d[k] for d in dec[i:i + batch_size]]).to(device) for k in keys}
               for i in range(0, len(dec), batch_size)]
    if device.type == "cuda":  # as the pipeline feeds them
        batches = [{k: v.contiguous(memory_format=torch.channels_last) for k, v in b.items()} for b in batches]
    return batches


def bare_rate(batches: list[dict], teacher, student, *, device: torch.device, precision: str) -> float:
    """Samples/s of teacher + student forward on pre-decoded batches already on the device."""
    from kdata.scoring.score import precision_mode

    n = sum(len(b[teacher.preprocess_key]) for b in batches)
    with torch.inference_mode(), precision_mode(precision, device):
        teacher.forward(batches[0][teacher.preprocess_key][:8])  # warm-up (cuDNN autotune, lazy init)
        student.forward(batches[0][student.preprocess_key][:8])
        _sync(device)
        t0 = time.perf_counter()
        for b in batches:
            teacher.forward(b[teacher.preprocess_key])
            student.forward(b[student.preprocess_key])
        _sync(device)
    return n / (time.perf_counter() - t0)


def cpu_decode_rate(images: list, keys: list) -> float:
    """Images/s one core reads → decodes → preprocesses (every key) → normalises, as a worker and the loop do."""
    from kdata.models.images import decode_multi_u8, normalise

    t0 = time.perf_counter()
    for b in images:
        for k, v in decode_multi_u8(b, keys).items():
            normalise(v, k[1], k[2])
    return len(images) / (time.perf_counter() - t0)


def gpu_decode_rate(images: list, keys: list, *, device: torch.device, batch_size: int, precision: str) -> float:
    """Images/s of batched nvJPEG decode + preprocessing on the device (what the pipeline does with JPEGs)."""
    from kdata.models.gpu_decode import decode_jpegs, preprocess

    gray = all(k[0][0] == 1 for k in keys)
    raw = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in images]
    preprocess(decode_jpegs(raw[:8], device=device, gray=gray), keys, precision=precision)  # warm-up: nvJPEG, kernels
    _sync(device)
    t0 = time.perf_counter()
    for i in range(0, len(raw), batch_size):
        preprocess([im for im in decode_jpegs(raw[i:i + batch_size], device=device, gray=gray) if im is not None], keys,
                   precision=precision)
    _sync(device)
    return len(raw) / (time.perf_counter() - t0)


def pipeline_rate(pool, teacher, student, *, config, device: torch.device) -> tuple[float, dict]:
    """Samples/s of ``score_pool`` end to end over every unit (no cache reuse), and its run info."""
    from kdata.scoring.score import score_pool

    t0 = time.perf_counter()
    scores, quarantined, info = score_pool(pool, teacher, student, config=config, device=device, cache=False)
    return (scores.num_rows + len(quarantined)) / (time.perf_counter() - t0), info


def gflops_per_sample(model) -> float:
    """Forward FLOPs of one sample (torch's FLOP counter: matmuls and convolutions), in GFLOP."""
    from torch.utils.flop_counter import FlopCounterMode

    p = next(iter(model.module.parameters()), None)
    x = torch.zeros((1, *model.input_size), device=p.device if p is not None else "cpu")
    # grad mode on: in inference mode nn.MultiheadAttention takes a fused fast path the counter misses
    with torch.enable_grad(), FlopCounterMode(display=False) as fc:
        model.forward(x)
    return fc.get_total_flops() / 1e9


def measure(args, pool, teacher, student, device: torch.device, *, workers: int, jpegs: bool) -> dict:
    """Alternate the figures for ``--repeat`` rounds and keep the best of each (load only slows a figure down)."""
    from kdata.models.gpu_decode import gpu_decodable
    from kdata.scoring.score import ScoreConfig, resolve_precision

    images = [b for u in pool.units for b in u.read().column("image").to_pylist()]
    keys = list(dict.fromkeys([teacher.preprocess_key, student.preprocess_key]))
    precision = resolve_precision(args.precision, device)
    config = ScoreConfig(batch_size=args.batch_size, num_workers=workers, precision=precision)
    batches = predecode(images[:8 * args.batch_size], keys, batch_size=args.batch_size, device=device)
    gpu_jpegs = jpegs and device.type == "cuda" and gpu_decodable(keys)
    r = {"bare_per_s": 0.0, "decode_per_s_one_core": 0.0, "gpu_decode_per_s": 0.0, "pipeline_per_s": 0.0}
    info: dict = {}
    paired = []  # per round: pipeline / min(bare just before and after it, that round's decode capacity)
    bare_after = bare_rate(batches, teacher, student, device=device, precision=precision)
    for round_ in range(args.repeat):
        bare_before = bare_after
        one_core = cpu_decode_rate(images[:args.decode_sample], keys)
        gpu = gpu_decode_rate(images[:32 * args.batch_size], keys, device=device, batch_size=args.batch_size,
                              precision=precision) if gpu_jpegs else 0.0
        rate, run_info = pipeline_rate(pool, teacher, student, config=config, device=device)
        bare_after = bare_rate(batches, teacher, student, device=device, precision=precision)
        paired.append(rate / min((bare_before + bare_after) / 2, gpu or max(workers, 1) * one_core))
        r["bare_per_s"] = max(r["bare_per_s"], bare_before, bare_after)
        r["decode_per_s_one_core"] = max(r["decode_per_s_one_core"], one_core)
        r["gpu_decode_per_s"] = max(r["gpu_decode_per_s"], gpu)
        if round_ == 0:
            r["pipeline_first_round_per_s"] = rate  # includes starting the worker fork server (once per process)
        if rate > r["pipeline_per_s"]:
            r["pipeline_per_s"], info = rate, run_info
    r["paired_ratios"] = [round(x, 3) for x in paired]
    if args.variants:
        r["variants"] = measure_variants(args.variants, repeat=args.repeat, rate=lambda: pipeline_rate(
            pool, teacher, student, config=config, device=device)[0])
    if args.stages:  # one more round, timed stage by stage (kept apart: the CUDA events cost a little)
        from kdata.scoring.stage_clock import stage_clock

        t0 = time.perf_counter()
        with stage_clock() as clock:
            r["stages_round_per_s"], _ = pipeline_rate(pool, teacher, student, config=config, device=device)
            r["stages"] = clock.summary()
        r["stages_round_s"] = time.perf_counter() - t0
    capacity = r["gpu_decode_per_s"] or max(workers, 1) * r["decode_per_s_one_core"]
    if device.type == "cpu":  # decode and forward share the cores: each decoded image costs forward time
        from kdata.models.decode_pool import available_cores

        cores = min(available_cores(), torch.get_num_threads() + workers) if workers else 1  # 0: in turn
        r["shared_core_bound_per_s"] = 1 / (1 / r["bare_per_s"] + 1 / (cores * r["decode_per_s_one_core"]))
    startup = info.get("seconds_to_first_batch", 0.0)
    steady = len(images) / max(info.get("seconds", 0.0) - startup, 1e-9)
    return {**r, "n": len(images), "units": len(pool.units), "device": str(device), "precision": precision,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "workers": workers, "batch_size": args.batch_size, "prepare_ahead": prepare_ahead(device),
            "decode_capacity_per_s": capacity,
            "ratio": r["pipeline_per_s"] / min(r["bare_per_s"], capacity),
            "seconds_to_first_batch": startup, "after_first_batch_per_s": steady,
            "ratio_after_first_batch": steady / min(r["bare_per_s"], capacity),
            "decode_pids": info.get("decode_pids"), "gpu_jpegs": info.get("gpu_jpegs"),
            "cuda_peak_bytes": info.get("cuda_peak_bytes"), "gpu_decode_per_s": r["gpu_decode_per_s"] or None}


VARIANT = re.compile(r"(\d+)x(\d+)(?:c(\d+))?(i?)")
SETTINGS = ("PREPARE_AHEAD", "PREPARE_THREADS", "CPU_JPEG_SHARE", "WRITE_BEHIND")


def variant_settings(spec: str) -> dict:
    """``AxT`` (inputs made A batches ahead by T threads; A = 0: in turn), then optionally ``cP``
    (CUDA: the decode workers decode P% of the JPEGs nvJPEG would take) and ``i`` (units written
    in turn on the scoring thread instead of by the writing thread)."""
    m = VARIANT.fullmatch(spec)
    if not m or int(m[3] or 0) > 100:
        raise SystemExit(f"score.py: --variants: {spec!r} is not AxT[cP][i] (e.g. 0x1,2x1,3x2c20,0x1i)")
    return {"PREPARE_AHEAD": int(m[1]), "PREPARE_THREADS": max(1, int(m[2])),
            "CPU_JPEG_SHARE": int(m[3] or 0) / 100, "WRITE_BEHIND": not m[4]}


def measure_variants(specs: list[str], *, repeat: int, rate) -> dict[str, float]:
    """Best pipeline samples/s of each engine variant over ``repeat`` alternating rounds (same pool,
    models and process as the main figure)."""
    from kdata.scoring import engine

    saved = {k: getattr(engine, k) for k in SETTINGS}
    best = dict.fromkeys(specs, 0.0)
    try:
        for _ in range(max(1, repeat)):
            for spec in specs:
                for k, v in variant_settings(spec).items():
                    setattr(engine, k, v)
                best[spec] = max(best[spec], rate())
    finally:
        for k, v in saved.items():
            setattr(engine, k, v)
    return best


def prepare_ahead(device: torch.device) -> int:
    """Batches made ahead on the preparing thread (CUDA with decode workers; 0 elsewhere)."""
    from kdata.scoring import engine

    return engine.PREPARE_AHEAD if device.type == "cuda" else 0


def case_jpeg(args, device: torch.device) -> dict:
    from kdata.models.decode_pool import resolve_workers
    from kdata.models.files import pool_class_names
    from kdata.models.spec import load_model
    from kdata.pools.readers import open_image_folder

    with tempfile.TemporaryDirectory(prefix="kdata-bench-") as tmp:
        work = Path(tmp)
        os.environ["KDATA_CACHE"] = str(work / "cache")
        t0 = time.perf_counter()
        make_jpeg_folder(work / "pool", args.n, sizes=args.sizes)
        t_spec, s_spec = make_teacher(work, args.teacher_arch), make_student(work, args.student_arch)
        pool = open_image_folder(str(work / "pool"), unit_files=math.ceil(args.n / args.units))
        with pool_class_names(pool.class_names):
            teacher, student = load_model(t_spec, device=device), load_model(s_spec, device=device)
        setup = time.perf_counter() - t0
        workers = resolve_workers(args.workers, rows=args.n, device=device)
        r = measure(args, pool, teacher, student, device, workers=workers, jpegs=True)
        kb = sum(u.read().column("image").nbytes for u in pool.units) / args.n / 1024
        return {"case": "jpeg", **r, "sizes": list(args.sizes), "mean_jpeg_kb": kb, "setup_s": setup,
                "teacher": f"open_clip {args.teacher_arch} (random init), {teacher.input_size} {teacher.interpolation}",
                "student": f"{args.student_arch} .pt2, {student.input_size} {student.interpolation}",
                "gflops_per_sample": {"teacher": gflops_per_sample(teacher), "student": gflops_per_sample(student)}}


def case_builtin(args, device: torch.device) -> dict:
    """``builtin:digits-web`` (1,457 32×32 PNGs in 4 units) with the built-in models, decoded in-process."""
    from kdata.models.spec import load_model
    from kdata.pools.spec import open_pool

    teacher = load_model("builtin:digits-teacher", device=device)
    student = load_model("builtin:digits-student", device=device)
    pool = open_pool("builtin:digits-web")
    return {"case": "builtin", **measure(args, pool, teacher, student, device, workers=0, jpegs=False)}


def report(r: dict, repeat: int) -> None:
    print("\n".join(report_lines(r, repeat)))


# long: one line per figure, in the order the docstring explains them
def report_lines(r: dict, repeat: int) -> list[str]:
    """The printed report of one case, line by line."""
    out = []
    print = out.append  # noqa: A001 — the lines below were written as prints
    print(f"[{r['case']}] {r['n']} images in {r['units']} units, {r['device']} {r['precision']}, "
          f"batch {r['batch_size']}, {r['workers']} decode worker(s), best of {repeat}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"
          + (f", inputs made {r['prepare_ahead']} batches ahead" if r.get("prepare_ahead") else ""))
    if r["case"] == "jpeg":
        g = r["gflops_per_sample"]
        print(f"  teacher {r['teacher']}\n  student {r['student']}")
        print(f"  JPEGs {r['sizes'][0]}–{r['sizes'][1]} px, mean {r['mean_jpeg_kb']:.1f} KiB; forward GFLOP/sample: "
              f"teacher {g['teacher']:.3f}, student {g['student']:.3f}")
    line = "  {:<46}{:>10.1f} {}"
    print(line.format("bare forward (pre-decoded, on the device)", r["bare_per_s"], "samples/s"))
    print(line.format("decode + preprocess, one core", r["decode_per_s_one_core"], "images/s"))
    if r["gpu_decode_per_s"]:
        print(line.format("decode + preprocess on the GPU (nvJPEG)", r["gpu_decode_per_s"], "images/s"))
    how = "GPU" if r["gpu_decode_per_s"] else f"{max(r['workers'], 1)} × one core"
    print(line.format(f"decode capacity ({how})", r["decode_capacity_per_s"], "images/s"))
    print(line.format(f"pipeline score_pool ({r['units']} units, end to end)", r["pipeline_per_s"], "samples/s"))
    print(line.format("  first round (cold: fork server, caches)", r["pipeline_first_round_per_s"], "samples/s"))
    print(line.format(f"  after its first batch ({r['seconds_to_first_batch']:.2f} s in)", r["after_first_batch_per_s"],
                      "samples/s"))
    print(f"  ratio pipeline / min(bare, decode capacity) {r['ratio']:10.2f}   "
          f"(after the first batch {r['ratio_after_first_batch']:.2f})")
    pr = sorted(r["paired_ratios"])
    print(f"  the same ratio per round, against the bare forward timed just before and after that round: "
          f"median {pr[len(pr) // 2]:.2f}, best {pr[-1]:.2f}")
    if r.get("shared_core_bound_per_s"):
        b = r["shared_core_bound_per_s"]
        print(f"  decode and forward on the same cores: at most {b:.1f} samples/s "
              f"(1 / (1/bare + 1/(cores × one-core decode))); pipeline / that bound {r['pipeline_per_s'] / b:.2f}")
    if r.get("cuda_peak_bytes"):
        print(f"  peak GPU memory {r['cuda_peak_bytes'] / 2**30:.2f} GiB; JPEGs decoded on the GPU: {r['gpu_jpegs']}")
    for spec, rate in r.get("variants", {}).items():
        v = variant_settings(spec)
        how = (f"inputs {v['PREPARE_AHEAD']} batches ahead on {v['PREPARE_THREADS']} thread(s)" if v["PREPARE_AHEAD"]
               else "inputs in turn") + (", units written on the scoring thread" if not v["WRITE_BEHIND"] else "") \
            + (f", {v['CPU_JPEG_SHARE']:.0%} of the JPEGs decoded by the workers" if v["CPU_JPEG_SHARE"] else "")
        print(f"    variant {spec:<6}{rate:>10.1f} samples/s  ({how})")
    if r.get("stages"):
        out += report_stages(r)
    return out


def report_stages(r: dict) -> list[str]:
    """The stage table of the ``--stages`` round (kdata.scoring.stage_clock): host and device seconds."""
    out = []
    print = out.append  # noqa: A001
    print(f"  stages of one more round ({r['stages_round_per_s']:.1f} samples/s, {r['stages_round_s']:.2f} s; "
          f"host = wall time of the scoring thread, device = CUDA stream time between the stage's events):")
    print(f"    {'stage':<20}{'calls':>7}{'host s':>10}{'share':>8}{'device s':>10}")
    for name, row in r["stages"].items():
        dev = f"{row['device_s']:10.3f}" if "device_s" in row else f"{'':>10}"
        print(f"    {name:<20}{row['calls']:>7}{row['host_s']:>10.3f}{row['host_s'] / r['stages_round_s']:>8.0%}{dev}")
    return out


def markdown(r: dict, *, repeat: int, command: str, seconds: float, load: float) -> str:
    """The docs block of a CPU run: how it was measured (pool, models, threads, versions, seconds,
    command), the printed report, and its ratios as a table row."""
    pr = sorted(r["paired_ratios"])
    bound = r.get("shared_core_bound_per_s")
    head = (f"{r['n']:,} JPEGs ({r['sizes'][0]}–{r['sizes'][1]} px) in {r['units']} units; teacher {r['teacher']}, "
            f"student {r['student']}; {r['device']} {r['precision']}, batch {r['batch_size']}, {r['workers']} decode "
            f"worker(s), best of {repeat} rounds, OMP_WAIT_POLICY={r['omp_wait_policy']}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} intra-op threads. Measured in {seconds:.0f} s on {os.cpu_count()} CPU cores "
            f"(load average {load:.1f} at the start) with:\n\n    {command}\n")
    rows = ["| run | ratio (best of each) | per-round median / best | of the shared-core bound |",
            "|---|---:|---:|---:|",
            f"| `{command.removeprefix('python benchmarks/score.py').strip() or '(defaults)'}` (this block) | "
            f"{r['ratio']:.2f} | {pr[len(pr) // 2]:.2f} / {pr[-1]:.2f} | "
            + (f"{r['pipeline_per_s'] / bound:.2f} |" if bound else "— |")]
    return head + "\n```\n" + "\n".join(report_lines(r, repeat)) + "\n```\n\n" + "\n".join(rows) + "\n"


def publishing(args, device: torch.device) -> bool:
    """Whether this run is the page's configuration: the default JPEG case and models on the CPU."""
    return (not args.quick and device.type == "cpu" and args.case == "jpeg" and args.teacher_arch == "bench-clip"
            and args.student_arch == "digitsnet" and (args.n, args.units, tuple(args.sizes), args.batch_size)
            == (2000, 4, (96, 320), 128))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small run: 3 units of one batch (3 × --batch-size JPEGs)")
    ap.add_argument("--n", type=int, default=2000, help="JPEGs in the pool (default 2000)")
    ap.add_argument("--units", type=int, default=4, help="pool units (≥ 3; default 4)")
    ap.add_argument("--sizes", type=lambda s: tuple(int(v) for v in s.split(",")), default=(96, 320),
                    help="smallest,largest JPEG side in px (default 96,320)")
    ap.add_argument("--workers", default="2", help="decode workers: a number or auto (default 2)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--teacher-arch", default="bench-clip", help="open_clip architecture, randomly initialised "
                    "(default bench-clip: a 4-layer ViT at 96 px), e.g. ViT-B-32")
    ap.add_argument("--student-arch", default="digitsnet", help="timm architecture exported to .pt2, randomly "
                    "initialised (default digitsnet: a small CNN at 64 px), e.g. resnet18")
    ap.add_argument("--case", choices=["all", "builtin", "jpeg"], default="jpeg")
    ap.add_argument("--repeat", type=int, default=2, help="alternating rounds; the best of each is kept")
    ap.add_argument("--decode-sample", type=int, default=400, help="images timed for the one-core decode rate")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the scoring process "
                    "(default: the cores, at most 2 on a CPU device)")
    ap.add_argument("--stages", action="store_true", help="one more pipeline round timed stage by stage "
                    "(host seconds; on CUDA also device seconds): where the time goes")
    ap.add_argument("--prepare-ahead", type=int, default=None, metavar="N",
                    help="CUDA: batches whose inputs a thread of their own makes ahead of the forward pass "
                    "(default: kdata's, 0: in turn, on the scoring thread)")
    ap.add_argument("--prepare-threads", type=int, default=None, metavar="T",
                    help="threads making inputs ahead, each on a CUDA stream of its own (default: kdata's)")
    ap.add_argument("--variants", type=lambda s: [v for v in s.split(",") if v], default=[],
                    help="also time these engine variants, best of --repeat rounds each: AxT = inputs A batches "
                    "ahead on T threads (0x1: in turn), then cP = CUDA: P%% of nvJPEG's JPEGs decoded by the "
                    "workers, i = units written on the scoring thread (e.g. 0x1,0x1i,2x1,3x2,3x2c20)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks/score.md")
    args = ap.parse_args(argv)
    t_start, load = time.perf_counter(), os.getloadavg()[0]
    for spec in args.variants:
        variant_settings(spec)
    if args.prepare_threads is not None:
        from kdata.scoring import engine

        engine.PREPARE_THREADS = args.prepare_threads
    if args.prepare_ahead is not None:
        from kdata.scoring import engine

        engine.PREPARE_AHEAD = args.prepare_ahead
    from kdata.models.spec import pick_device

    device = pick_device(args.device)
    if args.quick:
        args.units, args.n = 3, 3 * args.batch_size
    if args.units < 3:
        ap.error("--units: at least 3 (the pipeline must serve several units)")
    torch.set_num_threads(args.threads or (max(1, min(2, os.cpu_count() or 1)) if device.type == "cpu"
                                           else (os.cpu_count() or 1)))
    results = []
    if args.case in ("all", "builtin"):
        results.append(case_builtin(args, device))
    if args.case in ("all", "jpeg"):
        results.append(case_jpeg(args, device))
    for r in results:
        print(json.dumps(r, default=str)) if args.json else report(r, args.repeat)
    if results[-1]["case"] == "jpeg" and device.type == "cpu":
        command = "python benchmarks/score.py" + "".join(" " + shlex.quote(a) for a in
                                                         (sys.argv[1:] if argv is None else argv) if a != "--json")
        md = markdown(results[-1], repeat=args.repeat, command=command, seconds=time.perf_counter() - t_start,
                      load=load)
        if not args.json:
            print("\n" + md)
        if not args.no_write and publishing(args, device):
            runpy.run_path(str(Path(__file__).resolve().parent / "doc_tables.py"))["splice"]("score", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
