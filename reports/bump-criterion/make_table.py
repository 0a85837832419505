#!/usr/bin/env python3
"""Builds README.md's table and estimates.json from criterion's output.

Run after `cargo bench -p heapkit-bump --bench bump -- --warm-up-time 1
--measurement-time 3`: reads target/criterion/{small_alloc,vec_growth,
reset_cycle}/*/new/{benchmark,estimates}.json and prints a Markdown table
of medians (ns per element for the per-element groups, per iteration
otherwise) with ratios against bumpalo and the system allocator; writes the
raw medians and confidence intervals to estimates.json next to this file.
"""
import glob
import json
import os
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "target/criterion"
here = os.path.dirname(os.path.abspath(__file__))
rows = {}
raw = []
for bench in sorted(glob.glob(f"{root}/*/**/new/benchmark.json", recursive=True)):
    b = json.load(open(bench))
    group = b["group_id"]
    if group not in ("small_alloc", "vec_growth", "reset_cycle"):
        continue
    e = json.load(open(os.path.join(os.path.dirname(bench), "estimates.json")))
    per = 1
    if b.get("throughput") and "Elements" in b["throughput"]:
        per = b["throughput"]["Elements"]
    med = e["median"]["point_estimate"] / per
    lo = e["median"]["confidence_interval"]["lower_bound"] / per
    hi = e["median"]["confidence_interval"]["upper_bound"] / per
    case = group + ("/" + b["value_str"] if b.get("value_str") else "")
    rows.setdefault(case, {})[b["function_id"]] = med
    raw.append({"case": case, "allocator": b["function_id"], "unit_divisor": per,
                "median_ns": med, "median_ci_ns": [lo, hi]})

json.dump(raw, open(os.path.join(here, "estimates.json"), "w"), indent=1)
cols = ["heapkit_bump::Bump", "heapkit_bump::Arena", "bumpalo", "system"]
print("| case | " + " | ".join(cols) + " | Arena / bumpalo | Arena / system | Bump / bumpalo | Bump / system |")
print("|---" * (len(cols) + 5) + "|")
def key(c):
    g, _, v = c.partition("/")
    return (g, int(v) if v.isdigit() else 0)
for case in sorted(rows, key=key):
    r = rows[case]
    cells = [f"{r[c]:.2f}" if c in r else "-" for c in cols]
    def ratio(a, b):
        return f"{r[a] / r[b]:.2f}" if a in r and b in r else "-"
    print(f"| {case} | " + " | ".join(cells) + " | " + " | ".join(
        [ratio("heapkit_bump::Arena", "bumpalo"), ratio("heapkit_bump::Arena", "system"),
         ratio("heapkit_bump::Bump", "bumpalo"), ratio("heapkit_bump::Bump", "system")]) + " |")
