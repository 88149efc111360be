#!/usr/bin/env bash
# The GPU checks of docs/gpu.md in one command: about 8 minutes on one H100 or H200.
#
#   bash benchmarks/gpu_check.sh                 # on a machine with CUDA
#   bash benchmarks/gpu_check.sh --out DIR       # keep the outputs in DIR (default: a new temp dir)
#   bash benchmarks/gpu_check.sh --device cpu    # the same steps on the CPU, smaller (a smoke run)
#   bash benchmarks/gpu_check.sh --dry-run       # parse every command (--help), run nothing
#
# 1. Scoring throughput (benchmarks/score.py): an open_clip ViT-B-32 teacher and a timm ResNet-18
#    student (.pt2), both randomly initialised, 60,000 JPEGs of 224–400 px in 12 units, batch 256,
#    bf16, --workers auto: bare forward, nvJPEG decode rate, the pipeline and their ratio, and one
#    more round timed stage by stage (host and device seconds: where the time goes); on CUDA also
#    the default's baselines (--variants: inputs made in turn, with units written by their own
#    thread or on the scoring thread), and benchmarks/gpu_overlap.py (each part alone, in turn,
#    side by side).
# 2. `kdata select` on builtin:digits-web on the CPU (fp32) and on the GPU at fp32 and at bf16:
#    the kept sets compared with the CPU's.
# 3. `kdata train`, `kdata augment` and `kdata inspect` on the GPU's fp32 selection.
#
# The last lines say which targets were met (exit 1 when one was missed): pipeline ≥ 0.8 × the
# bare forward and ≥ 10,000 samples/s; the fp32 GPU kept set identical to the CPU's.
set -uo pipefail

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }
DEVICE=cuda DRY=0 OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY=1 ;;
    --device) DEVICE="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    *) echo "gpu_check.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
case "$DEVICE" in cpu|cuda|cuda:[0-9]*) ;; *) echo "gpu_check.sh: --device cpu, cuda or cuda:N" >&2; exit 2 ;; esac

cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/kdata-gpu-check.XXXXXX")}
mkdir -p "$OUT"
export KDATA_CACHE=${KDATA_CACHE:-$OUT/cache}
if [ "$DRY" = 0 ] && [ "$DEVICE" != cpu ] && ! python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu_check.sh: no CUDA device here (torch.cuda.is_available() is False); --device cpu runs the steps on the CPU" >&2
  exit 2
fi
if [ "$DEVICE" = cpu ]; then  # a smoke run: the default models, a small pool
  BENCH=(--device cpu --n 768 --units 3 --batch-size 128 --workers 2 --repeat 1)
else
  BENCH=(--device "$DEVICE" --teacher-arch ViT-B-32 --student-arch resnet18 --n 60000 --units 12 --sizes 224,400
         --batch-size 256 --workers auto --precision bf16 --repeat 2 --decode-sample 300)
fi

step() { echo; echo "== $*"; }
FAILED=()
run() {  # run a command (its stdout to $1 when given as OUT=FILE); with --dry-run only parse it.
  # A failed step is reported and the next ones still run (the summary names it; exit 1).
  local to="" rc=0
  if [[ "$1" == OUT=* ]]; then to="${1#OUT=}"; shift; fi
  echo "+ $*"
  if [ "$DRY" = 1 ]; then "$@" --help > /dev/null || rc=$?; elif [ -n "$to" ]; then "$@" > "$to" || rc=$?; else "$@" || rc=$?; fi
  if [ "$rc" != 0 ]; then echo "FAILED (exit $rc): $*"; FAILED+=("$*"); [ -n "$to" ] && rm -f "$to"; fi
  return 0
}

T0=$SECONDS
step "1/3 scoring throughput on $DEVICE"
run OUT="$OUT/score.json" timeout 330 python benchmarks/score.py "${BENCH[@]}" --stages --json
if [ "$DEVICE" != cpu ]; then
  run OUT="$OUT/variants.json" timeout 300 python benchmarks/score.py "${BENCH[@]}" --repeat 1 --n 24000 --units 4 \
    --variants 0x1,0x1i --json
  run OUT="$OUT/overlap.json" timeout 240 python benchmarks/gpu_overlap.py --json
fi

step "2/3 kdata select on builtin:digits-web: CPU fp32, $DEVICE fp32, $DEVICE bf16"
SELECT=(kdata select --pool builtin:digits-web --quiet --json)
run OUT="$OUT/select-cpu.json" "${SELECT[@]}" --device cpu --precision fp32 --out "$OUT/select-cpu"
run OUT="$OUT/select-fp32.json" "${SELECT[@]}" --device "$DEVICE" --precision fp32 --out "$OUT/select-fp32"
run OUT="$OUT/select-bf16.json" "${SELECT[@]}" --device "$DEVICE" --precision bf16 --out "$OUT/select-bf16"

step "3/3 train → augment → inspect on $DEVICE"
run OUT="$OUT/train.json" kdata train "$OUT/select-fp32" --device "$DEVICE" --epochs 3 --out "$OUT/student" --quiet --json
run OUT="$OUT/augment.json" kdata augment "$OUT/select-fp32" --device "$DEVICE" --out "$OUT/augmented" --quiet --json
run OUT="$OUT/inspect.json" kdata inspect "$OUT/augmented" --json
[ "$DRY" = 1 ] && { echo; [ ${#FAILED[@]} = 0 ] && echo "dry run: every command parsed" && exit 0; exit 1; }

step "summary ($((SECONDS - T0)) s; outputs in $OUT)"
python - "$OUT" "$DEVICE" "${#FAILED[@]}" <<'PY'
import json, sys
from pathlib import Path

import pyarrow.parquet as pq

out, device, failed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])


def load(name):  # a step's JSON output (a document, or its last line a JSON object), None when the step failed
    text = (out / name).read_text().strip() if (out / name).exists() else ""
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return json.loads(text.splitlines()[-1])


def kept(name):
    f = out / name / "decisions.parquet"
    if not f.exists():
        return None
    t = pq.read_table(f, columns=["sample_id", "decision"])
    return {s for s, d in zip(t.column("sample_id").to_pylist(), t.column("decision").to_pylist()) if d == "kept"}


targets = {}
r = load("score.json")
if r:
    print(f"scoring on {r['device']} ({r['precision']}, {r['workers']} workers, {r['n']} JPEGs in {r['units']} units): "
          f"bare forward {r['bare_per_s']:,.0f}/s, decode capacity {r['decode_capacity_per_s']:,.0f}/s, "
          f"pipeline {r['pipeline_per_s']:,.0f}/s (after its first batch {r['after_first_batch_per_s']:,.0f}/s), "
          f"ratio {r['ratio']:.2f}" + (f"; peak GPU memory {r['cuda_peak_bytes'] / 2**30:.2f} GiB, "
                                       f"{r['gpu_jpegs']} JPEGs decoded by nvJPEG" if r.get("cuda_peak_bytes") else ""))
for name, row in (r or {}).get("stages", {}).items():
    dev = f", device {row['device_s']:.2f} s" if "device_s" in row else ""
    print(f"  stage {name:<18} {row['calls']:>6} calls, host {row['host_s']:.2f} s{dev}")
variants = load("variants.json")
for spec, rate in (variants or {}).get("variants", {}).items():
    print(f"  engine variant {spec:<5} (score.py --variants: AxT = inputs A batches ahead on T threads, "
          f"i = units written on the scoring thread; {variants['n']} JPEGs): {rate:,.0f}/s")
overlap = load("overlap.json")
if overlap:
    print(f"  nvJPEG hardware backend: {overlap.get('nvjpeg_hardware_backend')}")
for name in ("forward", "nvjpeg", "preprocess", "decode+preprocess", "in turn", "ahead, 1 thread", "side by side"):
    if overlap and name in overlap:
        print(f"  gpu_overlap {name:<18} {overlap[name]['per_s']:>8,.0f}/s (host {overlap[name]['host_s']:.2f} s "
              f"of {overlap[name]['total_s']:.2f} s)")
targets["pipeline ≥ 0.8 × min(bare forward, decode capacity)"] = bool(r) and r["ratio"] >= 0.8
if device != "cpu":  # the GPU figure means nothing on a CPU
    targets["pipeline ≥ 10,000 samples/s"] = bool(r) and r["pipeline_per_s"] >= 10_000
cpu, same = kept("select-cpu"), {}
for p in ("fp32", "bf16"):
    k = kept(f"select-{p}")
    same[p] = cpu is not None and k == cpu
    if cpu is not None and k is not None:
        print(f"kept set, {device} {p} vs CPU fp32: {len(k & cpu)} of {len(cpu)} in common, "
              f"Jaccard {len(k & cpu) / max(1, len(k | cpu)):.3f}{' (identical)' if same[p] else ''}")
targets["fp32 kept set identical to the CPU's"] = same["fp32"]
train, inspect = load("train.json"), load("inspect.json")
if train:
    print(f"train: {json.dumps({k: v for k, v in train.items() if k.startswith('accuracy')})}")
if inspect:
    print(f"inspect: {json.dumps(inspect.get('counts', {}))}")
targets["every step ran"] = failed == 0
for name, ok in targets.items():
    print(f"{'MET   ' if ok else 'MISSED'}  {name}")
sys.exit(0 if all(targets.values()) else 1)
PY
