#!/usr/bin/env bash
# fineprune on a GPU beside the CPU path, for a machine that has one (a benchmark, not a test).
# Builds with the GPU backend (`--features wgpu`, or FEATURE=cuda DEVICE=cuda:0), then prints
# for each network the training and inference images/s on the GPU and on the CPU and their
# ratio, then times one defense end to end (fst) and the scan on a resnet18 at CIFAR size on
# both devices. One JSON line per measurement to docs/results/gpu.jsonl (date, commit, machine,
# device stamped).
#
#   scripts/bench_gpu.sh                       # wgpu
#   FEATURE=cuda DEVICE=cuda:0 scripts/bench_gpu.sh
#   ARCHS="lenet resnet18" STEPS=20 scripts/bench_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
FEATURE=${FEATURE:-wgpu}; DEVICE=${DEVICE:-wgpu}; STEPS=${STEPS:-20}; BATCH=${BATCH:-64}
ARCHS=${ARCHS:-lenet signnet resnet18}; RUNS=${RUNS:-target/bench-gpu}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/gpu}
cargo build --release --features "$FEATURE" -q
FP="$CARGO_TARGET_DIR/release/fineprune"
mkdir -p "$RUNS" docs/results
stamp=$(printf '"date": "%s", "commit": "%s", "machine": "%s, %s cores", "device": "%s"' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(git rev-parse --short HEAD)" "$(uname -m)" "$(nproc)" "$DEVICE")
printf "%-10s %12s %12s %7s   %12s %12s %7s\n" arch "gpu train" "cpu train" ratio "gpu infer" "cpu infer" ratio >&2
for arch in $ARCHS; do
  g=$("$FP" --device "$DEVICE" bench --arch "$arch" --batch-size "$BATCH" --steps "$STEPS" --json)
  c=$("$FP" bench --arch "$arch" --batch-size "$BATCH" --steps "$STEPS" --json)
  python3 - "$arch" "$g" "$c" "{$stamp}" <<'PY' >> docs/results/gpu.jsonl
import json, sys
arch, g, c, stamp = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
gt, ct, gi, ci = g["train_images_per_sec"], c["train_images_per_sec"], g["inference_images_per_sec"], c["inference_images_per_sec"]
print(f"{arch:<10} {gt:12.1f} {ct:12.1f} {gt / ct:6.2f}x   {gi:12.1f} {ci:12.1f} {gi / ci:6.2f}x", file=sys.stderr)
print(json.dumps({**stamp, "what": "throughput", "arch": arch, "gpu_train": gt, "cpu_train": ct, "gpu_inference": gi, "cpu_inference": ci}))
PY
done
# One defense and the scan on a CIFAR-size resnet18 (the synthetic set, so nothing is downloaded),
# on each device.
model="$RUNS/resnet18.safetensors"
[ -f "$model" ] || "$FP" attack --arch resnet18 --data synthetic:builtin --trigger patch --target 0 --epochs 2 --out "$model" >&2
for dev in "$DEVICE" cpu; do
  for what in "defend --method fst --clean-fraction 0.05 --out $RUNS/repaired-$dev.safetensors" "scan --clean-fraction 0.05"; do
    start=$(date +%s.%N)
    "$FP" --device "$dev" $what --model "$model" --data synthetic:builtin > /dev/null 2> "$RUNS/last.log" || true
    secs=$(python3 -c "import sys; print(round($(date +%s.%N) - $start, 1))")
    echo "$dev: ${what%% *} ${secs} s" >&2
    printf '{%s, "what": "%s", "on": "%s", "seconds": %s}\n' "$stamp" "${what%% *}" "$dev" "$secs" >> docs/results/gpu.jsonl
  done
done
