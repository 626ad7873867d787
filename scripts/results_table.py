#!/usr/bin/env python3
"""Prints a reproduce run's results.json as the README's Markdown table.

usage: scripts/results_table.py DIR/results.json
"""
import json
import sys


def fmt(v, digits=4):
    return "—" if v is None else f"{v:.{digits}f}"


r = json.load(open(sys.argv[1]))
print("| attack | defense | clean acc. | attack success [95% CI] | pruned | within budget | s |")
print("|---|---|---|---|---|---|---|")
for row in r["rows"]:
    asr = row["attack_success_rate"]
    ci = row.get("attack_success_rate_ci95")
    asr_s = "—" if asr is None else f"{asr:.4f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    pruned = row.get("pruned_fraction")
    pruned_s = "—" if pruned is None else f"{100 * pruned:.0f}%"
    wb = row.get("within_budget")
    wb_s = "—" if wb is None else ("yes" if wb else "**no**")
    print(f"| {row['attack']} | {row['defense']} | {fmt(row['clean_accuracy'])} | {asr_s} | {pruned_s} | {wb_s} | {row['seconds']:.0f} |")
print(f"\nwall time {r['seconds']:.0f} s")
