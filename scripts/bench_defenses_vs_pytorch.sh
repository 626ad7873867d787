#!/usr/bin/env bash
# The defense loops of fineprune against the same loops in PyTorch, side by side in one run on
# this machine (a benchmark, not a test).
#
#   scripts/bench_defenses_vs_pytorch.sh [resnet] [signnet]
#
# resnet: the PyTorch-made residual GTSRB CNN with BatchNorm (312k weights; trained once with
#   scripts/torch_models.py into $RUNS, ~15 min), imported from ONNX.
# signnet: fineprune's built-in signnet for GTSRB (trained 1 epoch by fineprune); the PyTorch
#   side is a fresh copy of the same network (loop time does not depend on the weights).
# For each: fine-tuning ($EPOCHS epochs, Adam 1e-4, batch 64), FST ($FST_EPOCHS epochs, SGD
# momentum 0.9 + cosine, batch 128) and ANP's mask optimisation ($ANP_STEPS steps, batch 128),
# all on 5% of GTSRB's training split with the whole validation split evaluated after every
# epoch and the best epoch kept, as `fineprune defend` runs them; and the scan's inversion (its
# first pass in the patch family: $SCAN_STEPS (60) steps, every class's trigger and the
# untargeted one in one batch of 11 images each, gradients to the input only; fineprune's scan
# runs that family alone, without the margin statistic). fineprune's per-epoch seconds come
# from `defend --json` and `scan --json` (stage times and epoch history), PyTorch's from
# `scripts/bench_torch.py peer-loops`. Best of $REPEATS (3) alternating runs per side; prints
# per-epoch (ANP: per-step) seconds, the ratio (PyTorch / fineprune: above 1 means fineprune is
# faster) and each side's peak memory, and appends one JSON line per loop to
# docs/results/defense-loops.jsonl (date, commit, machine stamped).
#
# Both sides read one defender split, $RUNS/defender.npz (written by the PyTorch side the first
# time: 5% of GTSRB's training split as clean data, a seeded 10% as validation), fineprune as
# `npz:` data with --clean-fraction 1: the same images to train on and to validate after every
# epoch.
#
# Needs python3 and the venv $VENV (default .venv) with torch, onnx, onnxruntime, numpy, pillow.
set -euo pipefail
cd "$(dirname "$0")/.."
parts=${*:-resnet signnet}
THREADS=${THREADS:-2}; REPEATS=${REPEATS:-3}; EPOCHS=${EPOCHS:-5}; FST_EPOCHS=${FST_EPOCHS:-5}; ANP_STEPS=${ANP_STEPS:-100}; SCAN_STEPS=${SCAN_STEPS:-60}
VENV=${VENV:-.venv}; RUNS=${RUNS:-target/bench-runs}; DATA=${DATA:-../shared/data}
export THREADS RAYON_NUM_THREADS=$THREADS
PY=$VENV/bin/python
[ -x "$PY" ] || { echo "no $PY: python3 -m venv $VENV && $VENV/bin/pip install torch onnx onnxruntime numpy pillow" >&2; exit 2; }
cargo build --release -q
FP=./target/release/fineprune
mkdir -p "$RUNS" docs/results
out=docs/results/defense-loops.jsonl
stamp() {
  printf '{"date": "%s", "commit": "%s", "machine": "%s, %s cores"}' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(git rev-parse --short HEAD)" "$(uname -m)" "$(nproc)"
}
peak() { awk '/Maximum resident/ {printf "%d", $NF / 1024}' "$1"; }

for part in $parts; do
  case $part in
    resnet)
      model="$RUNS/gtsrb-resnet.onnx"
      if [ ! -f "$model" ]; then
        echo "training the residual GTSRB model in PyTorch (once)" >&2
        "$PY" scripts/torch_models.py make "$RUNS" --data-root "$DATA" > "$RUNS/make.log" 2>&1
      fi
      peer=$model ;;
    signnet)
      model="$RUNS/gtsrb-signnet.safetensors"
      [ -f "$model" ] || "$FP" train --data "gtsrb:$DATA/gtsrb" --arch signnet --epochs 1 --out "$model" > /dev/null 2>&1
      peer=signnet ;;
    *) echo "usage: scripts/bench_defenses_vs_pytorch.sh [resnet] [signnet]" >&2; exit 2 ;;
  esac
  split="$RUNS/defender.npz"
  [ -f "$split" ] || "$PY" scripts/bench_torch.py defender-split "$split" --data-root "$DATA" --clean-fraction 0.05
  for r in $(seq "$REPEATS"); do
    echo "$part run $r: fineprune scan" >&2
    /usr/bin/time -v -o "$RUNS/loops-$part-scan-$r.time" "$FP" scan --model "$model" --data "npz:$split" --clean-fraction 1 \
      --steps "$SCAN_STEPS" --family patch --no-margins --json > "$RUNS/loops-$part-scan-$r.json" 2> "$RUNS/loops-$part-scan-$r.log"
    for m in finetune fst anp; do
      echo "$part run $r: fineprune $m" >&2
      /usr/bin/time -v -o "$RUNS/loops-$part-$m-$r.time" "$FP" defend --model "$model" --data "npz:$split" --method "$m" \
        --clean-fraction 1 --epochs "$EPOCHS" --fst-epochs "$FST_EPOCHS" --anp-iterations "$ANP_STEPS" --no-verify \
        --keep-out-of-budget --out "$RUNS/loops-$part-$m.onnx" --json > "$RUNS/loops-$part-$m-$r.json" 2> "$RUNS/loops-$part-$m-$r.log" || [ $? -eq 3 ]
    done
    echo "$part run $r: PyTorch" >&2
    /usr/bin/time -v -o "$RUNS/loops-$part-torch-$r.time" "$PY" scripts/bench_torch.py peer-loops "$peer" --data-root "$DATA" --clean-fraction 0.05 \
      --epochs "$EPOCHS" --fst-epochs "$FST_EPOCHS" --anp-steps "$ANP_STEPS" --scan-steps "$SCAN_STEPS" --npz "$split" > "$RUNS/loops-$part-torch-$r.json"
  done
  "$PY" - "$RUNS" "$part" "$REPEATS" "$(stamp)" >> "$out" <<'EOF'
import json, sys
runs, part, repeats, stamp = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
def peak(path):
    return int([l for l in open(path) if "Maximum resident" in l][0].split()[-1]) // 1024
def stage(d, name):
    return next(s["seconds"] for s in d["seconds_by_stage"] if s["stage"] == name)
rows = []
for loop, fp_stage, unit in [("finetune", "fine-tuning", "epoch"), ("fst", "feature-shift tuning", "epoch"), ("anp", "ANP mask optimisation", "step"),
                             ("scan", "patch first pass", "step")]:
    fp_best, pt_best, fp_peak, pt_peak = None, None, 0, 0
    for r in range(1, repeats + 1):
        d = json.load(open(f"{runs}/loops-{part}-{loop}-{r}.json"))
        t = json.load(open(f"{runs}/loops-{part}-torch-{r}.json"))
        if loop == "finetune":
            f, p = stage(d, fp_stage) / max(1, d["finetune_epochs"]), min(t["finetune_epoch_seconds"])
        elif loop == "fst":
            f, p = min(e["seconds"] for e in d["fst"]["history"]), min(t["fst_epoch_seconds"])
        elif loop == "anp":
            f, p = stage(d, fp_stage) / d["anp"]["iterations"], t["anp_seconds"] / t["anp_steps"]
        else:
            f, p = stage(d, fp_stage) / t["scan_steps"], t["scan_seconds"] / t["scan_steps"]
        fp_best = f if fp_best is None else min(fp_best, f)
        pt_best = p if pt_best is None else min(pt_best, p)
        fp_peak = max(fp_peak, peak(f"{runs}/loops-{part}-{loop}-{r}.time"))
        pt_peak = max(pt_peak, peak(f"{runs}/loops-{part}-torch-{r}.time"))
    row = {**stamp, "model": part, "loop": loop, "unit": unit, "fineprune_seconds": fp_best, "pytorch_seconds": pt_best, "ratio": pt_best / fp_best,
           "fineprune_peak_mib": fp_peak, "pytorch_peak_mib": pt_peak, "clean_samples": t["clean"], "val_samples": t["val"], "threads": t["threads"], "repeats": repeats}
    print(json.dumps(row))
    print(f"{part:<8} {loop:<9} per {unit:<5} fineprune {fp_best:8.3f} s  PyTorch {pt_best:8.3f} s  ratio {pt_best / fp_best:5.2f}x  peak {fp_peak} / {pt_peak} MiB", file=sys.stderr)
EOF
done
