#!/usr/bin/env bash
# The GPU backend's tests (tests/gpu.rs: training steps, inference, the pruning sweep and a
# defense on wgpu against the same runs on the CPU) and `fineprune demo --device wgpu`. Not part
# of `cargo test` (the default build has no GPU backend). On a machine without a GPU, Mesa's
# software Vulkan driver runs them (Debian/Ubuntu: apt install mesa-vulkan-drivers); it is slow.
#
#   scripts/test_gpu.sh            # wgpu; the build goes to target/gpu, beside the CPU build
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/gpu}
if command -v vulkaninfo >/dev/null; then
  vulkaninfo --summary 2>/dev/null | grep -E "deviceName|driverName" | sed 's/^/vulkan: /' >&2 || true
fi
cargo test --release --features wgpu --test gpu -- --test-threads 1
cargo build --release --features wgpu
demo=$(mktemp -d)
"$CARGO_TARGET_DIR/release/fineprune" --device wgpu demo --out "$demo"
echo "demo on wgpu: $demo" >&2
