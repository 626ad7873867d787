#!/usr/bin/env python3
"""Renders docs/architectures.md from the JSON lines scripts/torchvision_zoo.py wrote, and with
--readme the README's one-line summary between its marker comments. Nothing here is typed by
hand: rerun the zoo, then this.

    scripts/arch_table.py docs/results/torchvision-zoo.jsonl [--readme README.md] > docs/architectures.md
"""
import json
import sys

from generated import pop_option, replace_blocks

args = sys.argv[1:]
readme = pop_option(args, "--readme")
rows = [json.loads(line) for line in open(args[0]) if line.strip()]
stamp = rows[0]
archs = list(dict.fromkeys(r["model"] for r in rows))
exporters = list(dict.fromkeys(r["exporter"] for r in rows))
by = {(r["model"], r["exporter"]): r for r in rows}


def cell(r):
    if r is None:
        return "not run"
    if not r.get("imported"):
        return "no"
    agree = f"{r['agreement']:.3f}"
    back = f", export Δ {r['export_max_abs_diff']:.1e}" if r.get("exported") else ", export failed"
    return f"yes ({agree}{back})"


out = ["# Architectures: which torchvision models import", "",
       f"Measured {stamp['date']} at commit {stamp['commit']} on {stamp['machine']}, PyTorch {stamp['torch']}, by "
       "`scripts/torchvision_zoo.py` (table by `scripts/arch_table.py`). Each architecture with random weights "
       "(seeded; BatchNorm statistics perturbed), 10 classes, 64x64 inputs (VGG 224x224), exported by PyTorch's "
       "default exporter (`dynamo`, torch.export) and by the older TorchScript one. A cell reads: imported, the "
       "share of 32 inputs on which fineprune's prediction equals PyTorch's, and the largest logit difference "
       "between PyTorch and fineprune's own re-export run in onnxruntime.", "",
       "| architecture | " + " | ".join(exporters) + " |", "|---|" + "---|" * len(exporters)]
for a in archs:
    out.append(f"| {a} | " + " | ".join(cell(by.get((a, e))) for e in exporters) + " |")
fails = [r for r in rows if not r.get("imported")]
if fails:
    out += ["", "Why the others do not import (fineprune's own message, shortened):", ""]
    for r in fails:
        out.append(f"- {r['model']}, {r['exporter']}: {r.get('error', '')[:300]}")
print("\n".join(out))

if readme:
    good = lambda r: r.get("imported") and r.get("agreement") == 1.0  # noqa: E731
    ok = sorted({r["model"] for r in rows if good(r)})
    both = [a for a in archs if all(good(by.get((a, e), {})) for e in exporters)]
    no = sorted(set(archs) - set(ok))
    summary = (f"Of {len(archs)} torchvision architectures exported from PyTorch, {len(ok)} import and predict as PyTorch "
               f"does with at least one of its exporters ({len(both)} with both): {', '.join(ok)}; not yet: "
               f"{', '.join(no) or 'none'} ([docs/architectures.md](docs/architectures.md)).")
    replace_blocks(readme, [(("<!-- architectures: scripts/arch_table.py -->", "<!-- end of architectures -->"), summary)])
