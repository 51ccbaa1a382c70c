#!/usr/bin/env python3
"""The longest Rust functions: lines from each `fn` line to its matching closing brace.

Usage: scripts/longest_fns.py [SRC_DIR] [COUNT]   (defaults: src 12)

Braces are matched line by line with string and char literals and `//` comments blanked, which
is enough for this code base (raw strings are not blanked; the JSON in them has balanced
braces). Methods are named `Type::name` after the nearest `impl` above them.
"""
import os, re, sys
root = sys.argv[1] if len(sys.argv) > 1 else "src"
top = int(sys.argv[2]) if len(sys.argv) > 2 else 12
fn_re = re.compile(r'^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern\s+"[^"]*"\s+)?fn\s+(\w+)')
rows = []
for d, _, fs in os.walk(root):
    for f in fs:
        if not f.endswith(".rs"): continue
        p = os.path.join(d, f)
        lines = open(p, encoding="utf-8").read().split("\n")
        impl = None
        for i, l in enumerate(lines):
            mi = re.match(r'^\s*impl(<[^>]*>)?\s+(.*?)\s*\{?\s*$', l)
            if mi and not l.strip().startswith("//"):
                impl = re.sub(r'<.*', '', mi.group(2).split(" for ")[-1]).strip()
            m = fn_re.match(l)
            if not m: continue
            # find the opening brace, then match braces (ignoring strings/chars roughly)
            depth = 0; started = False; j = i
            while j < len(lines):
                s = re.sub(r'"(\\.|[^"\\])*"', '""', lines[j])
                s = re.sub(r"'(\\.|[^'\\])'", "''", s)
                s = s.split("//")[0]
                if not started and ";" in s and "{" not in s: break
                for c in s:
                    if c == "{": depth += 1; started = True
                    elif c == "}": depth -= 1
                if started and depth == 0: break
                j += 1
            if started:
                indent = len(l) - len(l.lstrip())
                name = (impl + "::" if indent > 0 and impl else "") + m.group(7)
                rows.append((j - i + 1, p, i + 1, name))
rows.sort(reverse=True)
for n, p, ln, name in rows[:top]:
    print(f"{n:4d}  {name}  {p}:{ln}")
