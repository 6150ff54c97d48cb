#!/usr/bin/env python3
"""Lists functions in src/ longer than N lines (default 80), longest first: a brace counter that skips each file's `#[cfg(test)] mod tests`. Usage: scripts/fn-lengths.py [N] [PATH]. Issue 13 asks for none over 120 and at most three over 80 (tables of cases excepted)."""
import re, sys, os
N = int(sys.argv[1]) if len(sys.argv) > 1 else 80
root = sys.argv[2] if len(sys.argv) > 2 else 'src'
out = []
walk = [(os.path.dirname(root), None, [os.path.basename(root)])] if os.path.isfile(root) else os.walk(root)
for dp, _, fs in walk:
    for f in fs:
        if not f.endswith('.rs'): continue
        p = os.path.join(dp, f)
        lines = open(p).read().split('\n')
        i = 0
        in_tests = False
        while i < len(lines):
            l = lines[i]
            if re.match(r'\s*#\[cfg\(test\)\]', l) and i + 1 < len(lines) and re.match(r'\s*mod tests', lines[i+1]):
                break
            m = re.match(r'\s*(pub(\([a-z]+\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)', l)
            if m:
                # find opening brace
                j = i; depth = 0; started = False
                while j < len(lines):
                    s = re.sub(r'"(\\.|[^"\\])*"', '""', lines[j])
                    s = re.sub(r"//.*", "", s)
                    for ch in s:
                        if ch == '{': depth += 1; started = True
                        elif ch == '}': depth -= 1
                    if started and depth <= 0: break
                    if not started and s.rstrip().endswith(';'): break
                    j += 1
                n = j - i + 1
                if started and n > N:
                    out.append((n, p, i + 1, m.group(6)))
                i = j + 1 if started else i + 1
                continue
            i += 1
for n, p, ln, name in sorted(out, reverse=True):
    print(f"{n:5d} {p}:{ln} {name}")
print(f"{len(out)} functions over {N} lines", file=sys.stderr)
