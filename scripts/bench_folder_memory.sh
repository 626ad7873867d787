#!/usr/bin/env bash
# Peak memory of `eval` on an image folder of 2,000 and of 20,000 images of the same size
# (issue: memory flat in the number of images). Prints both peaks and their ratio.
# Usage: scripts/bench_folder_memory.sh [WORKDIR]   (needs python3 with numpy and pillow; if
# they are missing a venv is made in WORKDIR/venv)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-target/bench-folder-memory}
mkdir -p "$work"
cargo build --release -q
fp=./target/release/fineprune
py=python3
if ! $py -c "import numpy, PIL" 2>/dev/null; then
  [ -x "$work/venv/bin/python" ] || { python3 -m venv "$work/venv" && "$work/venv/bin/pip" install -q numpy pillow; }
  py="$work/venv/bin/python"
fi
# A model for 8 classes of 32x32 colour images (the built-in synthetic set).
[ -f "$work/model.safetensors" ] || $fp train --data synthetic:- --arch lenet --epochs 1 --out "$work/model.safetensors" 2>/dev/null
for n in 2000 20000; do
  dir="$work/folder-$n"
  [ -d "$dir" ] || $py - "$dir" "$n" <<'PY'
import os, sys
import numpy as np
from PIL import Image
out, n = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
for i in range(n):
    d = os.path.join(out, "test", f"class{i % 8}")
    os.makedirs(d, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "RGB").save(os.path.join(d, f"{i:06}.png"))
# The loader needs a train split too; a small one.
for c in range(8):
    d = os.path.join(out, "train", f"class{c}")
    os.makedirs(d, exist_ok=True)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "RGB").save(os.path.join(d, f"{i}.png"))
PY
  /usr/bin/time -f "%M" -o "$work/rss-$n" $fp eval --model "$work/model.safetensors" --data "folder:$dir" --json > /dev/null 2> "$work/eval-$n.log"
  echo "eval on $n images: peak RSS $(cat "$work/rss-$n") KiB"
done
awk -v a="$(cat "$work/rss-2000")" -v b="$(cat "$work/rss-20000")" 'BEGIN { printf "ratio 20000/2000: %.2fx (target: at most 1.5x)\n", b / a }'
