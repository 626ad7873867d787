#!/usr/bin/env bash
# fineprune against PyTorch on this machine, side by side in one run (a benchmark, not a test).
#
#   scripts/bench_vs_pytorch.sh [throughput] [defend]
#
# throughput: training and inference images/s of the same networks (lenet, signnet, resnet18, the
#   312k-weight residual GTSRB CNN, torchvision's mobilenet_v2 and efficientnet_b0, and vit_tiny), batch $BATCH (64), Adam, $THREADS threads (2) on both
#   sides, random inputs, $STEPS steps ($STEPS/3 for resnet18), best of $REPEATS (3) alternating
#   runs per side; prints both rates and their ratio, and each side's peak memory, and writes one
#   JSON line per network to docs/results/throughput.jsonl (date, commit, machine stamped), from
#   which scripts/performance_md.py writes docs/performance.md. ARCHS="mobilenet_v2 ..." re-measures
#   only those networks and replaces only their rows.
# defend: `fineprune defend --method fineprune --clean-fraction 0.05` on a PyTorch-trained
#   residual GTSRB model against the same defense written the way the Python toolkits write it
#   (the whole network re-run per pruned channel, then fine-tuning), end to end, both producing
#   the same numbers: the validation sweep, the test curve (clean and attack success at every
#   level), fine-tuning, and the result's test numbers.
#
# Needs python3; creates a venv ($VENV, default .venv-bench) with CPU PyTorch from the package
# registry if it is absent. The defend part needs ../shared/data/gtsrb and trains the backdoored
# model with scripts/torch_models.py the first time ($RUNS/gtsrb-resnet.onnx, ~10 min).
set -euo pipefail
cd "$(dirname "$0")/.."
parts=${*:-throughput defend}
THREADS=${THREADS:-2}; BATCH=${BATCH:-64}; STEPS=${STEPS:-40}; REPEATS=${REPEATS:-3}
VENV=${VENV:-.venv-bench}; RUNS=${RUNS:-target/bench-runs}; DATA=${DATA:-../shared/data}
# torchvision's mobile nets at 64x64, exported by PyTorch with BatchNorm kept, and a ViT-Tiny-sized
# transformer at 32x32 (both sides train the same network); ARCHS overrides the whole list.
MOBILE=${MOBILE:-mobilenet_v2 efficientnet_b0 vit_tiny}
export THREADS RAYON_NUM_THREADS=$THREADS
mkdir -p "$RUNS"
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV with CPU PyTorch" >&2
  python3 -m venv "$VENV"
  # The CPU-only wheel where PyTorch's own index is reachable; else the package registry's
  # (which carries the CUDA libraries too, unused here).
  "$VENV/bin/pip" install -q --index-url https://download.pytorch.org/whl/cpu torch || "$VENV/bin/pip" install -q torch
  "$VENV/bin/pip" install -q onnx onnxruntime numpy pillow
fi
PY="$VENV/bin/python"
cargo build --release -q
FP=./target/release/fineprune
# Peak resident memory of a command, from /usr/bin/time -v (its output goes to $1).
peak() { grep "Maximum resident" "$1" | awk '{printf "%.0f", $NF/1024}'; }
echo "# $(date -u +%Y-%m-%d) on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); $THREADS threads, batch $BATCH, $STEPS steps, best of $REPEATS; torch $("$PY" -c 'import torch; print(torch.__version__)')"

stamp() {
  printf '{"date": "%s", "commit": "%s", "machine": "%s, %s cores", "cpu": "%s", "torch": "%s", "threads": %s, "batch": %s, "repeats": %s}' \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(git rev-parse --short HEAD)" "$(uname -m)" "$(nproc)" \
    "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" "$("$PY" -c 'import torch; print(torch.__version__)')" "$THREADS" "$BATCH" "$REPEATS"
}

if [[ " $parts " == *" throughput "* ]]; then
  mkdir -p docs/results
  if [ -n "${ARCHS:-}" ]; then
    # Only these networks are re-measured: their old rows go, the others' stay (each row is
    # stamped with its own date and commit).
    touch docs/results/throughput.jsonl
    python3 -c 'import json, sys
keep = [l for l in open(sys.argv[1]) if l.strip() and json.loads(l)["network"] not in sys.argv[2].split()]
open(sys.argv[1], "w").writelines(keep)' docs/results/throughput.jsonl "$ARCHS"
  else
    : > docs/results/throughput.jsonl
  fi
  # torchvision only to export the mobile nets (MOBILE= skips them).
  [ -z "$MOBILE" ] || "$PY" -c "import torchvision" 2>/dev/null || "$VENV/bin/pip" install -q torchvision
  for arch in sign-resnet $MOBILE; do
    [ -f "$RUNS/$arch.onnx" ] || "$PY" scripts/bench_torch.py export "$arch" "$RUNS/$arch.onnx" 2>/dev/null
  done
  printf "%-12s %12s %12s %7s   %12s %12s %7s   %9s %9s\n" >&2 arch "fp train" "torch train" ratio "fp infer" "torch infer" ratio "fp MiB" "torch MiB"
  for arch in ${ARCHS:-lenet signnet resnet18 sign-resnet $MOBILE}; do
    fp_arch=$arch; steps=$STEPS
    [ -f "$RUNS/$arch.onnx" ] && fp_arch="$RUNS/$arch.onnx"
    [ "$arch" = resnet18 ] && steps=$(( (STEPS + 2) / 3 ))
    # $REPEATS alternating runs of each side; each side's best rate counts (this virtual
    # machine's neighbours move single runs of either side by up to 2x).
    fp=""; pt=""
    for _ in $(seq "$REPEATS"); do
      fp+=$(/usr/bin/time -v -o "$RUNS/fp-time.txt" "$FP" bench --arch "$fp_arch" --batch-size "$BATCH" --steps "$steps" --json)$'\n'
      pt+=$(/usr/bin/time -v -o "$RUNS/pt-time.txt" "$PY" scripts/bench_torch.py throughput "$arch" --batch "$BATCH" --steps "$steps")$'\n'
    done
    "$PY" - "$arch" "$fp" "$pt" "$(peak "$RUNS/fp-time.txt")" "$(peak "$RUNS/pt-time.txt")" "$(stamp)" "$steps" <<'EOF' >> docs/results/throughput.jsonl
import json, sys
arch, fm, pm, stamp, steps = sys.argv[1], sys.argv[4], sys.argv[5], json.loads(sys.argv[6]), int(sys.argv[7])
fp = [json.loads(l) for l in sys.argv[2].splitlines() if l.strip()]
pt = [json.loads(l) for l in sys.argv[3].splitlines() if l.strip()]
ft, fi = max(r["train_images_per_sec"] for r in fp), max(r["inference_images_per_sec"] for r in fp)
tt, ti = max(r["train"] for r in pt), max(r["inference"] for r in pt)
print(f"{arch:<12} {ft:12.1f} {tt:12.1f} {ft / tt:6.2f}x   {fi:12.1f} {ti:12.1f} {fi / ti:6.2f}x   {fm:>9} {pm:>9}", file=sys.stderr)
print(json.dumps({**stamp, "network": arch, "steps": steps, "fineprune_train": ft, "pytorch_train": tt, "fineprune_inference": fi,
                  "pytorch_inference": ti, "fineprune_peak_mib": int(fm), "pytorch_peak_mib": int(pm)}))
EOF
  done
fi

if [[ " $parts " == *" defend "* ]]; then
  model="$RUNS/gtsrb-resnet.onnx"
  if [ ! -f "$model" ]; then
    echo "training the backdoored residual GTSRB model in PyTorch (once)" >&2
    "$PY" scripts/torch_models.py make "$RUNS" --data-root "$DATA" > "$RUNS/make.log" 2>&1
  fi
  /usr/bin/time -v -o "$RUNS/fp-defend-time.txt" "$FP" defend --model "$model" --data "gtsrb:$DATA/gtsrb" --method fineprune \
    --clean-fraction 0.05 --trigger patch:color=yellow --target 14 --out "$RUNS/repaired.onnx" --json > "$RUNS/fp-defend.json" 2> "$RUNS/fp-defend.log"
  /usr/bin/time -v -o "$RUNS/pt-defend-time.txt" "$PY" scripts/bench_torch.py peer-fineprune "$model" --data-root "$DATA" --clean-fraction 0.05 > "$RUNS/pt-defend.json"
  "$PY" - "$RUNS" "$(peak "$RUNS/fp-defend-time.txt")" "$(peak "$RUNS/pt-defend-time.txt")" <<'EOF'
import json, sys
runs, fm, pm = sys.argv[1:]
fp, pt = json.load(open(f"{runs}/fp-defend.json")), json.load(open(f"{runs}/pt-defend.json"))
def wall(path):  # /usr/bin/time -v: "Elapsed (wall clock) time (h:mm:ss or m:ss): 1:02.50"
    v = [l for l in open(path) if "Elapsed (wall clock)" in l][0].rsplit(" ", 1)[1]
    return sum(float(x) * 60 ** i for i, x in enumerate(reversed(v.split(":"))))
fw, pw = wall(f"{runs}/fp-defend-time.txt"), wall(f"{runs}/pt-defend-time.txt")
print("defend --method fineprune --clean-fraction 0.05 on the PyTorch-made residual GTSRB CNN (wall clock, loading included)")
print(f"  fineprune: {fw:7.1f} s  (defense {fp['seconds']:.1f} s; pruned {fp['pruned_channels']}/{fp['pruned_by_layer'][0]['units']}, peak {fm} MiB)")
for st in fp["seconds_by_stage"]:
    print(f"     {st['stage']:<50} {st['seconds']:7.1f} s")
a = fp["after"]
print(f"     after: val {a['val_accuracy']:.4f}, test {a['clean_accuracy']:.4f}, attack success {a['attack_success_rate']:.4f}")
print(f"  PyTorch peer style: {pw:7.1f} s  (pruned {pt['pruned']}/{pt['channels']}, peak {pm} MiB)")
for stage, s in pt["seconds_by_stage"].items():
    print(f"     {stage:<50} {s:7.1f} s")
v, t, r = pt["after_val_test_asr"]
print(f"     after: val {v:.4f}, test {t:.4f}, attack success {r:.4f}")
print(f"  ratio (end to end, peer / fineprune): {pw / fw:.2f}x")
EOF
fi
