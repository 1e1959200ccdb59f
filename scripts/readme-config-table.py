#!/usr/bin/env python3
"""Rewrites the configuration table in README.md from src/config/keys.rs (the one list
of keys). A unit test fails when a key is missing from the README, so run this after
adding a key."""
import os
import re

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
src = open(os.path.join(root, "src/config/keys.rs")).read()
rows = []
for m in re.finditer(r'key\(\s*"([^"]+)",\s*"((?:[^"\\]|\\.)*)",\s*"((?:[^"\\]|\\.)*)",?\s*\)', src):
    rows.append((m.start(), m.group(1), m.group(2).replace('\\"', '"'), m.group(3).replace('\\"', '"')))
for m in re.finditer(r'path: "([^"]+)",\s*aliases: &\[([^\]]*)\],\s*default: "((?:[^"\\]|\\.)*)",\s*doc: "((?:[^"\\]|\\.)*)"', src):
    aliases = ", ".join("`" + a.strip().strip('"').split(".")[-1] + "`" for a in m.group(2).split(",") if a.strip())
    rows.append((m.start(), m.group(1), m.group(3), m.group(4) + " Also spelled " + aliases + "."))
rows.sort()
table = "| key | default | meaning |\n|---|---|---|\n" + "\n".join(
    f"| `{k}` | {d.replace('|', '/')} | {doc} |" for _, k, d, doc in rows
)
path = os.path.join(root, "README.md")
readme = open(path).read()
start = readme.index("| key | default | meaning |")
end = readme.index("\n\nNotes:", start)
open(path, "w").write(readme[:start] + table + readme[end:])
print(f"{len(rows)} keys")
