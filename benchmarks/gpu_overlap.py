"""Where GPU scoring time goes: each part of a batch alone, the parts in turn, and the inputs made on a thread.

For batches of JPEGs (crops of scikit-learn's sample photos, ``--sizes`` px) and an open_clip
ViT-B-32 teacher + timm ResNet-18 student (random weights, as ``benchmarks/score.py`` makes them),
it times on one CUDA device, in samples/s with the host seconds the Python thread spent issuing
the work (a part whose host seconds are its total is host-bound):

* ``forward``: teacher + student on inputs already made (the bare forward);
* ``nvjpeg``: ``kdata.models.gpu_decode.decode_jpegs`` alone; ``preprocess``: the batched resize and
  normalisation alone (``preprocess``, at the run's precision); ``decode+preprocess``: both;
* ``in turn``: decode → preprocess → forward for each batch on one thread (the engine with
  ``PREPARE_AHEAD = 0``);
* ``ahead, 1 thread`` / ``2 threads``: decode + preprocess on thread(s) and CUDA stream(s) of their
  own, the forward on the main thread (the engine's ``prepare_ahead``);
* ``side by side``: decode + preprocess of some batches on a thread while the main thread forwards
  other, already-made ones — the most any overlap can give on this device.

Then the CUDA kernel time per part (``torch.profiler``, top kernels) and one ``score_pool`` run with
``torch.cuda.set_sync_debug_mode("warn")``: any call that synchronises the host with the device
inside the scoring loop is listed.

    python benchmarks/gpu_overlap.py                 # 4,096 JPEGs of 224–400 px, batch 256, bf16
    python benchmarks/gpu_overlap.py --json          # the figures as one JSON object
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import os
import queue
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=4096, help="JPEGs (default 4096)")
    ap.add_argument("--sizes", type=lambda s: tuple(int(v) for v in s.split(",")), default=(224, 400))
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--teacher-arch", default="ViT-B-32")
    ap.add_argument("--student-arch", default="resnet18")
    ap.add_argument("--workers", type=int, default=12, help="decode workers of the score_pool run (default 12)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_overlap.py: needs a CUDA device (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    r = measure(args)
    if args.json:
        print(json.dumps(r, default=str))
    return 0


def nvjpeg_hardware() -> str:
    """Whether the nvJPEG library torchvision loads can open its hardware backend (the JPEG engines
    of A100/H100-class GPUs; torchvision batch-decodes baseline JPEGs there when it can, else decodes
    one image at a time with the Huffman stage on the host): ``nvjpegCreateEx`` with
    NVJPEG_BACKEND_HARDWARE (3), by ctypes; status 0 = available, 7 = NVJPEG_STATUS_ARCH_MISMATCH."""
    import ctypes
    import glob

    import torchvision

    base = Path(torchvision.__file__).resolve().parent
    found = sorted(glob.glob(str(base.parent / "torchvision.libs" / "libnvjpeg*.so*"))
                   + glob.glob(str(base.parent / "nvidia" / "*" / "lib" / "libnvjpeg*.so*")))
    for name in [*found, "libnvjpeg.so"]:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        handle = ctypes.c_void_p()
        status = lib.nvjpegCreateEx(3, None, None, 0, ctypes.byref(handle))
        return f"{Path(name).name}: nvjpegCreateEx(HARDWARE) status {status}"
    return "no libnvjpeg found"


def measure(args) -> dict:
    import score as bench

    from kdata.models.files import pool_class_names
    from kdata.models.gpu_decode import decode_jpegs, preprocess
    from kdata.models.spec import load_model
    from kdata.pools.readers import open_image_folder
    from kdata.scoring.score import ScoreConfig, precision_mode, score_pool

    dev, p = torch.device("cuda"), args.precision
    work = Path(tempfile.mkdtemp(prefix="kdata-overlap-"))
    os.environ["KDATA_CACHE"] = str(work / "cache")
    bench.make_jpeg_folder(work / "pool", args.n, sizes=args.sizes)
    t_spec, s_spec = bench.make_teacher(work, args.teacher_arch), bench.make_student(work, args.student_arch)
    logging.getLogger().setLevel(logging.WARNING)
    pool = open_image_folder(str(work / "pool"), unit_files=math.ceil(args.n / 4))
    with pool_class_names(pool.class_names):
        teacher, student = load_model(t_spec, device=dev), load_model(s_spec, device=dev)
    keys = list(dict.fromkeys([teacher.preprocess_key, student.preprocess_key]))
    raw = [torch.frombuffer(bytearray(b), dtype=torch.uint8)
           for u in pool.units for b in u.read().column("image").to_pylist()]
    bs = args.batch_size
    batches = [raw[i:i + bs] for i in range(0, len(raw) - bs + 1, bs)]
    n = len(batches) * bs

    def decode(b):
        return decode_jpegs(b, device=dev, gray=False)

    def inputs(images):
        x = preprocess(images, keys, precision=p)
        return {k: v.contiguous(memory_format=torch.channels_last) for k, v in x.items()}

    def forward(x):
        with torch.inference_mode(), precision_mode(p, dev):
            teacher.forward(x[teacher.preprocess_key])
            student.forward(x[student.preprocess_key])

    forward(inputs(decode(batches[0])))  # warm-up: nvJPEG handles, cuDNN, kernels
    decoded = [decode(b) for b in batches]
    made = [inputs(d) for d in decoded]
    torch.cuda.synchronize()
    r: dict = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__, "n": n, "batch_size": bs,
               "precision": p, "sizes": list(args.sizes), "nvjpeg_hardware_backend": nvjpeg_hardware()}

    def timed(name, fn, reps=2):
        best = None
        for _ in range(reps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            host = fn()
            torch.cuda.synchronize()
            total = time.perf_counter() - t0
            best = min(best or (total, host), (total, host))
        r[name] = {"per_s": n / best[0], "host_s": best[1], "total_s": best[0]}
        if not args.json:
            print(f"  {name:<22}{r[name]['per_s']:>10,.0f} samples/s   host {best[1]:.3f} s of {best[0]:.3f} s")

    def loop(body):
        def run():
            t0 = time.perf_counter()
            for item in body():
                pass
            return time.perf_counter() - t0
        return run

    if not args.json:
        print(f"[{r['device']}] {n} JPEGs of {args.sizes[0]}–{args.sizes[1]} px, batch {bs}, {p}, "
              f"torch {torch.__version__}")
    timed("forward", loop(lambda: (forward(x) for x in made)))
    timed("nvjpeg", loop(lambda: (decode(b) for b in batches)))
    timed("preprocess", loop(lambda: (preprocess(d, keys, precision=p) for d in decoded)))
    timed("decode+preprocess", loop(lambda: (preprocess(decode(b), keys, precision=p) for b in batches)))
    timed("in turn", loop(lambda: (forward(inputs(decode(b))) for b in batches)))

    def ahead(threads: int):
        def run():
            q: queue.Queue = queue.Queue(maxsize=2 * threads)
            streams = [torch.cuda.Stream(dev) for _ in range(threads)]

            def make(j):
                with torch.inference_mode(), torch.cuda.stream(streams[j]):
                    for i in range(j, len(batches), threads):
                        x = inputs(decode(batches[i]))
                        event = torch.cuda.Event()
                        event.record(streams[j])
                        q.put((x, event))

            workers = [threading.Thread(target=make, args=(j,)) for j in range(threads)]
            t0 = time.perf_counter()
            for w in workers:
                w.start()
            compute = torch.cuda.current_stream(dev)
            for _ in batches:
                x, event = q.get()
                compute.wait_event(event)
                for v in x.values():
                    v.record_stream(compute)
                forward(x)
            for w in workers:
                w.join()
            return time.perf_counter() - t0
        return run

    timed("ahead, 1 thread", ahead(1))
    timed("ahead, 2 threads", ahead(2))

    def side_by_side():
        side = torch.cuda.Stream(dev)

        def make():
            with torch.inference_mode(), torch.cuda.stream(side):
                for b in batches:
                    preprocess(decode(b), keys, precision=p)

        t = threading.Thread(target=make)
        t0 = time.perf_counter()
        t.start()
        for x in made:
            forward(x)
        t.join()
        return time.perf_counter() - t0

    timed("side by side", side_by_side)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for b in batches[:4]:
            forward(inputs(decode(b)))
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=15)
    r["profile_top_kernels"] = table
    if not args.json:
        print(f"CUDA time of 4 batches in turn (top 15 ops):\n{table}")
    cfg = ScoreConfig(batch_size=bs, num_workers=args.workers, precision=p)
    score_pool(pool, teacher, student, config=cfg, device=dev, cache=False)  # starts the decode workers
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            score_pool(pool, teacher, student, config=cfg, device=dev, cache=False)
            r["score_pool_per_s"] = n / (time.perf_counter() - t0)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = collections.Counter(f"{w.filename}:{w.lineno}: {str(w.message)[:120]}" for w in caught
                                if "synchroniz" in str(w.message))
    r["synchronising_calls"] = syncs.most_common(20)
    if not args.json:
        print(f"  score_pool (sync debug on) {r['score_pool_per_s']:,.0f} samples/s; calls that synchronise: "
              f"{sum(syncs.values())}")
        for where, count in syncs.most_common(20):
            print(f"    {count:>5} × {where}")
    return r


if __name__ == "__main__":
    sys.exit(main())
