#!/usr/bin/env python3
"""docs/security.md from docs/results/fuzz.jsonl (appended to by scripts/fuzz.sh): the threat
model, what is bounded, and the latest campaign row of every fuzz target. Generated, never
typed: re-run after a campaign.

    python3 scripts/fuzz_table.py docs/results/fuzz.jsonl > docs/security.md
"""
import json
import re
import sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
latest = {}
for r in rows:  # later lines win: the newest run of each target
    latest[r["target"]] = r
targets = re.findall(r'^name = "(.*)"$', open("fuzz/Cargo.toml").read(), re.M)
targets = [t for t in targets if t != "fineprune-fuzz"]
n = lambda v: "?" if v is None else f"{v:,}"

print("""# Hostile files: what fineprune bounds, refuses and fuzzes

Every model and data file is treated as coming from someone we do not trust: the person who
handed over a possibly backdoored model may also hand over the files around it.

## What is bounded

- **Decoded data**: one budget on the decoded output *after conversion to the model's shape*
  (samples x channels x height x width x 4 bytes): a quarter of the available memory, at least
  256 MiB and at most 16 GiB (`LoadOptions::max_decoded_bytes` in the library), checked before
  anything is allocated, in every loader (IDX, GTSRB, ORL,
  FSDD, npz, CIFAR, image folders) and in every streamed chunk of `eval --data folder:`. A tiny
  `.npz` resized to a huge model, uint8 widened to f32, or a compressed bomb is one error line.
- **Models**: the file's size, every tensor's element count (`--max-tensor-elements`, default
  2^28) and all tensors' bytes together (`--max-model-bytes`, default a quarter of the available
  memory, at most 4 GiB; the file may be 16 MiB more) before `onnx-ir` sees an ONNX file;
  dangling inputs, duplicate outputs, cycles, subgraphs, string tensors and stored data that
  does not match its dims are refused (`tests/fixtures/onnx/bad/` holds such files); graph shape
  inference uses saturating arithmetic and bounds every output dimension and the parameter
  count (the kernels' indexing relies on it); NaN or infinite weights are refused
  (`--allow-non-finite` to load them anyway); a state dict's tensors must fit the architecture
  (0-d or mis-shaped tensors are named).
- **Paths**: ONNX external data that is absolute, climbs out of the model's folder or leaves it
  through a symbolic link is refused; every data loader refuses links out of its data folder.
- **Outputs** are written atomically: a temporary file with an unpredictable name, created
  exclusively (`O_EXCL`) beside the target, then renamed over it; a link planted at the output
  path is replaced, never followed.
- **Errors**: one line naming the file and the problem, exit status 1, no panic (a panic inside
  a third-party parser is caught and reported). `tests/hostile.rs` runs these cases under an
  8 GB address-space limit.

## What is fuzzed""")
if not latest:
    print("\nNo campaign recorded yet: run `scripts/fuzz.sh`.")
    sys.exit()
dates = sorted(r["date"] for r in latest.values())
commits = sorted({r["commit"] for r in latest.values()})
machines = sorted({r["machine"] for r in latest.values()})
print(f"""
`fuzz/` holds one `cargo fuzz` target per reader of outside bytes, each calling the library
function the CLI calls: ONNX import plus a forward pass (`onnx`, and the structure-aware
`onnx_graph`, whose input chooses a graph of exporter operators with mostly-fitting attributes),
fineprune `.safetensors`, PyTorch state dicts, the MODEL.toml sidecar, IDX, PPM/PGM, WAV to the
spectrogram, GTSRB CSV, FSDD names, `--trigger` specs, `.npz`, `.npy` pairs, CIFAR batches,
image decoding; `data_to_shape` runs the npz and CIFAR loaders *with the conversion to a model
shape drawn from the input* (up to 1024x1024, 64 MiB budget: a larger allocation is a finding);
`graph_shapes` runs shape inference on layer chains with arbitrary attributes and checks the
bounds of what it accepts.

`RUNS=1000000 JOBS=1 scripts/fuzz.sh 1800` builds them (libFuzzer, address sanitizer) and runs
each to a million executions or 30 minutes, with memory (`-rss_limit_mb`, `-malloc_limit_mb`
2048) and time (`-timeout` 10 s) bounds; each run appends a line to `docs/results/fuzz.jsonl`.
The latest run of each target (runs from {dates[0][:10]} to {dates[-1][:10]}, commits
{', '.join(commits)}, {', '.join(machines)}; seconds include building):

| target | executions | exec/s | edges | features | findings | seconds | date |
|---|---|---|---|---|---|---|---|""")
for t in targets:
    r = latest.get(t)
    if r is None:
        print(f"| `{t}` | not run | | | | | | |")
        continue
    print(f"| `{t}` | {n(r['executions'])} | {n(r['exec_per_s'])} | {n(r['edges'])} | {n(r['features'])} | "
          f"{r['findings']} | {r['seconds']} | {r['date'][:10]} |")
open_findings = sum(r["findings"] for r in latest.values())
# libFuzzer stops at its first finding; otherwise a run short of a million hit the time bound.
short = [t for t, r in latest.items() if (r["executions"] or 0) < 1_000_000 and not r["findings"]]
found = [t for t, r in latest.items() if r["findings"]]
print(f"\nFindings in the latest runs: **{open_findings}**."
      + (f" Stopped at a finding: {', '.join(f'`{t}`' for t in found)} (fixed afterwards when listed below; its campaign is to be run again)." if found else "")
      + (f" Stopped by the time bound before a million executions: {', '.join(f'`{t}`' for t in short)}." if short else ""))
print("""
A finding becomes a fix and a regression test with the minimised input (`tests/fuzz_regressions.rs`,
inputs in `tests/fixtures/fuzz/`, none hidden behind a `catch_unwind`). Found so far: a
`--trigger` colour with a multi-byte character panicked; a 95-byte `.npy` declaring a 4 GiB
header made `npyz` allocate it; a 468-byte `.npy` header of nested braces hung `npyz`'s header
parser for over 15 s (the preamble and the header's nesting are now checked first); an ONNX node
reading one value twice (`Add(x, x)`) crashed the forward pass; an `AveragePool` with `auto_pad`
and a zero stride divided by zero; a `Gemm` bias of the wrong length reached `TensorData::new`
unchecked; `Split`s of a rank-1 value (also one a `Squeeze` without axes had made rank 1), of
a shape-derived value and into negative sizes reached `onnx-ir`'s unchecked indexing (caught
and reported as a parser failure; now refused first, naming the node); a product of two
constants whose shapes broadcast failed an assertion in `onnx-ir`'s constant folding (caught;
now refused first); a `Range` over a whole shape (an opset-11 `Shape` ignores `end`) made
`onnx-ir` read a vector's element type and panic (caught; now refused first); and once a
panic in the fuzz target's own graph generator, not in fineprune. Not covered by fuzzing: the training and defense loops on
valid but adversarial weights (they are covered by the bounds above, not by a fuzzer), and
`onnx-ir`'s own code beyond what our targets reach through it.""")
