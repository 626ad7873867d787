#!/usr/bin/env bash
# Every defense and the scan on modern architectures a user brings (a benchmark, not a test; CI
# has no PyTorch). For each torchvision architecture trained in PyTorch on GTSRB with the yellow
# sticker -> 14 backdoor and exported by PyTorch's default exporter (scripts/torch_models.py make
# DIR --torchvision ARCH, trained once): `fineprune defend` with fineprune, anp and fst at 5%
# clean data (the sticker given only to measure), each repaired ONNX file measured again by
# onnxruntime (scripts/torch_models.py eval), and `fineprune scan` without the trigger. One JSON
# line per run to docs/results/arch-defenses.jsonl (date, commit, machine stamped), which
# scripts/arch_table.py renders into docs/architectures.md.
#
#   scripts/arch_defenses.sh [DIR]          # DIR holds or receives the models (target/arch-models)
#   ARCHS="vit mobilenet_v2" PY=.venv/bin/python DATA=../shared/data scripts/arch_defenses.sh
#   ARCHS=mobilenet_v2 METHODS=fst SCAN=1 APPEND=1 scripts/arch_defenses.sh   # only these runs,
#       appended (the table keeps the latest row per architecture and run, each with its stamp)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-target/arch-models}; DATA=${DATA:-../shared/data}; PY=${PY:-.venv/bin/python}
ARCHS=${ARCHS:-vit mobilenet_v2}; METHODS=${METHODS-fineprune anp fst}; SCAN=${SCAN:-1}
out=docs/results/arch-defenses.jsonl
mkdir -p "$DIR" docs/results
cargo build --release -q
# A copy, so a rebuild while this runs cannot change the binary under the later runs.
FP="$DIR/fineprune"
cp target/release/fineprune "$FP"
stamp=$(printf '"date": "%s", "commit": "%s", "machine": "%s, %s cores"' "$(date -u +%Y-%m-%d)" "$(git rev-parse --short HEAD)" "$(uname -m)" "$(nproc)")
[ -n "${APPEND:-}" ] || : > "$out"
for arch in $ARCHS; do
  model="$DIR/gtsrb-$arch.onnx"
  if [ ! -f "$model" ]; then
    echo "training $model in PyTorch (once)" >&2
    "$PY" scripts/torch_models.py make "$DIR" --torchvision "$arch" --data-root "$DATA" > "$DIR/make-$arch.log" 2>&1
  fi
  for method in $METHODS; do
    repaired="$DIR/$arch-$method.onnx"; rm -f "$repaired"
    echo "$arch: defend --method $method" >&2
    start=$SECONDS; code=0
    "$FP" defend --model "$model" --data "gtsrb:$DATA/gtsrb" --method "$method" --clean-fraction 0.05 \
      --trigger patch:color=yellow --target 14 --out "$repaired" --json > "$DIR/$arch-$method.json" 2> "$DIR/$arch-$method.log" || code=$?
    ort='null'
    [ -f "$repaired" ] && ort=$("$PY" scripts/torch_models.py eval "$repaired" --task gtsrb --data-root "$DATA" --json)
    "$PY" - "$DIR/$arch-$method.json" "$ort" "$code" $((SECONDS - start)) "{$stamp}" "$arch" "$method" <<'EOF' >> "$out"
import json, sys
path, ort, code, secs, stamp, arch, method = sys.argv[1:]
r = json.load(open(path)) if open(path).read().strip() else {}
b, a = r.get("before", {}), r.get("after", {})
print(json.dumps({**json.loads(stamp), "arch": arch, "run": method, "exit_code": int(code), "seconds": int(secs),
                  "within_budget": r.get("within_budget"), "before_clean": b.get("clean_accuracy"), "before_asr": b.get("attack_success_rate"),
                  "after_val": a.get("val_accuracy"), "after_clean": a.get("clean_accuracy"), "after_asr": a.get("attack_success_rate"),
                  "onnxruntime": json.loads(ort)}))
EOF
  done
  [ "$SCAN" = 1 ] || continue
  echo "$arch: scan" >&2
  start=$SECONDS
  "$FP" scan --model "$model" --data "gtsrb:$DATA/gtsrb" --clean-fraction 0.05 --json > "$DIR/$arch-scan.json" 2> "$DIR/$arch-scan.log"
  "$PY" - "$DIR/$arch-scan.json" $((SECONDS - start)) "{$stamp}" "$arch" <<'EOF' >> "$out"
import json, sys
path, secs, stamp, arch = sys.argv[1:]
r = json.load(open(path))
finalists = [f for fam in r["families"] for f in fam.get("finalists", []) if f["class"] == 14]
print(json.dumps({**json.loads(stamp), "arch": arch, "run": "scan", "seconds": int(secs), "verdict": r["verdict"], "targets": r["targets"],
                  "target_control_ratio": min((f["control_ratio"] for f in finalists), default=None)}))
EOF
done
echo "wrote $out" >&2
