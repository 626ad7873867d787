#!/usr/bin/env python3
"""Regenerates every generated document from the committed JSON in docs/results/ into a
scratch folder and compares it with the committed one: the README's generated blocks and each
docs/*.md that a table script writes. Exits 1 naming every file that differs (then re-run the
script named, or scripts/check_generated.py --write to rewrite them all). Standard library only:
the test suite runs it (tests/docs.rs).

    scripts/check_generated.py [--write]
"""
import difflib
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
R = "docs/results"
# (document, the table script and its inputs); each gets --readme when it writes README blocks.
GENERATED = [
    ("docs/detection.md", ["scripts/scan_table.py", f"{R}/scan-zoo.jsonl", f"{R}/repairs.jsonl"], True),
    ("docs/architectures.md", ["scripts/arch_table.py", f"{R}/torchvision-zoo.jsonl", f"{R}/arch-defenses.jsonl"], True),
    ("docs/security.md", ["scripts/fuzz_table.py", f"{R}/fuzz.jsonl"], False),
    ("docs/results.md", ["scripts/results_md.py"], True),
    ("docs/performance.md", ["scripts/performance_md.py"], False),
    ("docs/matrix.md", ["scripts/matrix_md.py"], True),
]

write = "--write" in sys.argv[1:]
scratch = tempfile.mkdtemp(prefix="fineprune-generated-")
readme = os.path.join(scratch, "README.md")
shutil.copy(os.path.join(ROOT, "README.md"), readme)
outputs = []
for doc, command, has_readme in GENERATED:
    args = [sys.executable, *command] + (["--readme", readme] if has_readme else [])
    run = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"{' '.join(command)} failed: {run.stderr.strip()}")
    outputs.append((doc, run.stdout))
outputs.append(("README.md", open(readme).read()))
stale = []
for doc, text in outputs:
    path = os.path.join(ROOT, doc)
    committed = open(path).read() if os.path.exists(path) else ""
    if committed == text:
        continue
    if write:
        open(path, "w").write(text)
        print(f"rewrote {doc}")
        continue
    stale.append(doc)
    diff = difflib.unified_diff(committed.splitlines(), text.splitlines(), f"{doc} (committed)", f"{doc} (from the JSON)", lineterm="", n=1)
    print("\n".join(list(diff)[:40]), file=sys.stderr)
shutil.rmtree(scratch)
if stale:
    sys.exit(f"not what the committed JSON gives: {', '.join(stale)} (scripts/check_generated.py --write rewrites them)")
print("every generated document matches the committed JSON")
