#!/usr/bin/env python3
"""Atomic read-modify-writes per call, by function, from a callgrind run.

usage: benches/locked_rmws.py BINARY CALLGRIND_OUT CALLS (see BENCHMARKS.md,
"Scaling past two cores")

The callgrind run must use --dump-instr=yes --dump-line=no
--compress-pos=no --compress-strings=no. Every x86 instruction with a
`lock` prefix, and every `xchg` with a memory operand (implicitly locked),
is an atomic read-modify-write; its execution count (from the Ir of that
address, one Ir per execution) is summed per function and divided by CALLS.
"""
import re
import subprocess
import sys
from collections import defaultdict

binary, out, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])

# Locked instructions of the binary, by address (link-time), and symbols.
locked = {}
dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", binary],
                     capture_output=True, text=True).stdout
sym_addr = {}
cur = None
for line in dis.splitlines():
    m = re.match(r"^([0-9a-f]+) <(.*)>:$", line)
    if m:
        cur = m.group(2)
        sym_addr.setdefault(cur, int(m.group(1), 16))
        continue
    m = re.match(r"^\s+([0-9a-f]+):\s+(.*)$", line)
    if not m:
        continue
    ins = m.group(2)
    if ins.startswith("lock ") or (ins.startswith("xchg") and "(" in ins):
        locked[int(m.group(1), 16)] = (cur, ins.split("#")[0].strip())

# Callgrind: per instruction address, its Ir (self cost lines only).
costs = defaultdict(int)
fn_of = {}
obj = None
fn = None
skip_next = False
with open(out) as f:
    for line in f:
        line = line.rstrip("\n")
        if line.startswith("ob="):
            obj = line[3:]
            continue
        if line.startswith("fn="):
            fn = line[3:]
            continue
        if line.startswith("calls="):
            skip_next = True
            continue
        if not line or not (line[0] == "0" and line[1:2] == "x"):
            continue
        if skip_next:
            skip_next = False
            continue
        parts = line.split()
        if len(parts) < 2:
            continue
        addr = int(parts[0], 16)
        if obj and obj.endswith(binary.split("/")[-1]):
            costs[addr] += int(parts[1])
            fn_of[addr] = fn

# The load offset: the difference that maps most locked addresses.
best, best_hits = 0, -1
for off in (0, 0x108000, 0x4000000, 0x400000, 0x10000):
    hits = sum(1 for a in costs if (a - off) in locked)
    if hits > best_hits:
        best, best_hits = off, hits

total = 0
rows = defaultdict(lambda: [0, set()])
for a, n in costs.items():
    k = a - best
    if k in locked:
        sym, ins = locked[k]
        rows[fn_of[a]][0] += n
        rows[fn_of[a]][1].add(ins)
        total += n
print(f"load offset {best:#x}; locked instructions per call: {total / calls:.2f}")
for fn, (n, ins) in sorted(rows.items(), key=lambda r: -r[1][0]):
    if n / calls >= 0.01:
        print(f"  {n / calls:6.2f}  {fn[:110]}  [{'; '.join(sorted(ins))[:80]}]")
