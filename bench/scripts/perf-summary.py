#!/usr/bin/env python3
"""Summarises `perf script -F tid,ip,sym` output (samples with call chains),
keeping only samples whose stack passes through a frame matching --within
(default: the timed loop of time-ingest). Prints the top functions by self
samples and by inclusive samples (each function counted once per sample).

  perf record -e cpu-clock -F 999 --call-graph dwarf,32768 -o ingest.data \\
      target/release/time-ingest --sync no-sync
  perf script -i ingest.data -F tid,ip,sym | bench/scripts/perf-summary.py
"""
import argparse
import collections
import re
import sys

ap = argparse.ArgumentParser()
ap.add_argument("--within", default=r"time_ingest::run\b")
ap.add_argument("--top", type=int, default=40)
args = ap.parse_args()
within = re.compile(args.within)

def clean(line):
    parts = line.strip().split(None, 1)
    if len(parts) < 2:
        return None
    sym = parts[1].replace(" (inlined)", "")
    sym = re.sub(r"\+0x[0-9a-f]+$", "", sym)
    return sym

self_c = collections.Counter()
incl_c = collections.Counter()
total = kept = 0
stack = []

def flush():
    global total, kept
    if not stack:
        return
    total += 1
    if any(within.search(s) for s in stack):
        kept += 1
        self_c[stack[0]] += 1
        for s in set(stack):
            incl_c[s] += 1

for line in sys.stdin:
    if not line.strip():
        flush()
        stack = []
    elif line[0] not in " \t":
        flush()
        stack = []
    else:
        s = clean(line)
        if s:
            stack.append(s)
flush()

print(f"{kept} of {total} samples inside /{args.within}/")
print(f"\nself (top {args.top}):")
for s, n in self_c.most_common(args.top):
    print(f"  {100.0 * n / kept:6.2f}%  {s[:150]}")
print(f"\ninclusive (top {args.top}):")
for s, n in incl_c.most_common(args.top):
    print(f"  {100.0 * n / kept:6.2f}%  {s[:150]}")
