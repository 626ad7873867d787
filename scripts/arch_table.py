#!/usr/bin/env python3
"""Renders docs/architectures.md from the JSON lines scripts/torchvision_zoo.py wrote, and with
--readme the README's one-line summary between its marker comments. Nothing here is typed by
hand: rerun the zoo, then this.

    scripts/arch_table.py docs/results/torchvision-zoo.jsonl [docs/results/arch-defenses.jsonl] [--readme README.md] > docs/architectures.md

The second file (scripts/arch_defenses.sh) adds every defense and the scan on architectures
trained in PyTorch with a backdoor.
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


# The latest row per (architecture, exporter) counts; each measurement's date and commit are
# named, since architectures can be re-measured alone.
stamps = {}
for r in by.values():
    stamps.setdefault((r["date"], r["commit"]), []).append(r["model"])
when = "; ".join(f"{d} at commit {c}" + ("" if len(stamps) == 1 else f" ({', '.join(dict.fromkeys(models))})") for (d, c), models in sorted(stamps.items()))
out = ["# Architectures: which torchvision models import", "",
       f"Measured {when} on {stamp['machine']}, PyTorch {stamp['torch']}, by "
       "`scripts/torchvision_zoo.py` (table by `scripts/arch_table.py`). Each architecture with random weights "
       "(seeded; BatchNorm statistics perturbed, and the vision transformer's constant-initialised parameters), "
       "10 classes, 64x64 inputs (VGG 224x224), exported by PyTorch's "
       "default exporter (`dynamo`, torch.export) and by the older TorchScript one. A cell reads: imported, the "
       "share of 32 inputs on which fineprune's prediction equals PyTorch's, and the largest logit difference "
       "between PyTorch and fineprune's own re-export run in onnxruntime.", "",
       "| architecture | " + " | ".join(exporters) + " |", "|---|" + "---|" * len(exporters)]
for a in archs:
    out.append(f"| {a} | " + " | ".join(cell(by.get((a, e))) for e in exporters) + " |")
fails = [r for r in by.values() if not r.get("imported")]
if fails:
    out += ["", "Why the others do not import (fineprune's own message, shortened):", ""]
    for r in fails:
        out.append(f"- {r['model']}, {r['exporter']}: {r.get('error', '')[:300]}")


def pct(v):
    return "-" if v is None else f"{100 * v:.1f}%"


runs = [json.loads(line) for line in open(args[1]) if line.strip()] if len(args) > 1 else []
if runs:
    # The latest row per (architecture, run) counts (runs may be re-measured one at a time).
    latest = {(r["arch"], r["run"]): r for r in runs}
    stamps = list(dict.fromkeys((r["date"], r["commit"]) for r in latest.values()))
    several = len(stamps) > 1
    when = " and ".join(f"{d} at commit {c}" for d, c in stamps)
    out += ["", "## Defended and scanned", "",
            f"Measured {when} on {runs[0]['machine']} by `scripts/arch_defenses.sh`" + (" (each cell names its commit)" if several else "") + ": each architecture "
            "trained in PyTorch on GTSRB with a 4x4 yellow sticker relabelled 14 (10% of the training set), exported by "
            "PyTorch's default exporter, then `fineprune defend` at 5% clean data (the sticker given only to measure) and "
            "`fineprune scan` without it. A defense cell reads: attack success after the repair / clean test accuracy, as "
            "onnxruntime measures the repaired ONNX file (fineprune's own numbers when no file was written), and whether "
            "validation accuracy stayed within the 4-point budget (out of budget: exit 3, no file). Seconds are wall clock "
            "on a machine that may have been running other work.", "",
            "| architecture | before: attack success / clean | fineprune | anp | fst | scan (without the trigger) |", "|---|---|---|---|---|---|"]
    for arch in dict.fromkeys(r["arch"] for r in runs):
        mine = {run: r for (a, run), r in latest.items() if a == arch}
        at = lambda r: f", {r['commit']}" if several else ""  # noqa: E731
        first = next((r for r in mine.values() if r.get("before_asr") is not None), {})
        cells = []
        for method in ["fineprune", "anp", "fst"]:
            r = mine.get(method)
            if r is None:
                cells.append("not run")
                continue
            o = r.get("onnxruntime")
            asr, clean = (o["attack_success"], o["clean_accuracy"]) if o else (r.get("after_asr"), r.get("after_clean"))
            budget = "within budget" if r.get("within_budget") else "out of budget"
            cells.append(f"{pct(asr)} / {pct(clean)}, {budget} ({r['seconds']} s{at(r)})")
        sc = mine.get("scan")
        if sc:
            ratio = sc.get("target_control_ratio")
            scan = f"{sc['verdict']}" + (f" ({', '.join(map(str, sc['targets']))})" if sc["targets"] else "")
            scan += f"; class 14 refined to {ratio:.2f}x the controls" if ratio is not None else "; class 14 not a finalist"
            scan += f" ({sc['seconds']} s{at(sc)})"
        else:
            scan = "not run"
        out.append(f"| {arch} | {pct(first.get('before_asr'))} / {pct(first.get('before_clean'))} | " + " | ".join(cells) + f" | {scan} |")
print("\n".join(out))

if readme:
    good = lambda r: r.get("imported") and r.get("agreement") == 1.0  # noqa: E731
    ok = sorted({r["model"] for r in by.values() if good(r)})
    both = [a for a in archs if all(good(by.get((a, e), {})) for e in exporters)]
    no = sorted(set(archs) - set(ok))
    summary = (f"Of {len(archs)} torchvision architectures exported from PyTorch, {len(ok)} import and predict as PyTorch "
               f"does with at least one of its exporters ({len(both)} with both): {', '.join(ok)}; not yet: "
               f"{', '.join(no) or 'none'} ([docs/architectures.md](docs/architectures.md)).")
    replace_blocks(readme, [(("<!-- architectures: scripts/arch_table.py -->", "<!-- end of architectures -->"), summary)])
