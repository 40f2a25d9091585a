#!/usr/bin/env python3
# Builds the per-group table of docs/dmtcp-compatibility.md from autotest
# outputs (run.sh -v): table.py GROUPS_TSV dmtcp-root dmtcp-user ours-root ours-user
# (an output may be several runs concatenated: a group's last result counts).
# GROUPS_TSV: category, group and note per line, from the harness's list:
#   python3 $DMTCP_SRC/test/autotest.py --list --suite all |
#     awk '/^[A-Z]/{c=$0} /^  /{print c "\t" $1 "\t" substr($0, 45)}'
# reasons.py says why a group's results differ.
import re, sys
groups_tsv, *files = sys.argv[1:]
cats = {}
order = []
for line in open(groups_tsv):
    cat, name, note = (line.rstrip("\n").split("\t") + ["", ""])[:3]
    cats[name] = (cat, note.strip())
    order.append(name)
def parse(path):
    res = {}
    for line in open(path):
        m = re.match(r"^  (\S+)\s+(.*)$", line.rstrip("\n"))
        if not m:
            continue
        name, rest = m.groups()
        if rest.startswith(("starting", "artifacts", "logs:", "command:", "cwd:", "output tail", "phase=")):
            continue
        if name not in cats and "coordinator-" + name in cats:
            name = "coordinator-" + name
        if name == "synthetic":
            name = "coordinator-synthetic"
        if "FAILED" in rest or rest.startswith("FAIL."):
            res[name] = "fail"
        elif rest.startswith("PASS.") or re.search(r"PASSED \(\d", rest):
            res[name] = "pass"
    return res
runs = [parse(f) for f in files]
names = list(dict.fromkeys(["dmtcp-unit", "autotest-unit", "dmtcp-cli", "command-json", "coordinator-synthetic"] + order))
for n in names:
    if n not in cats:
        cats[n] = ("Unit, harness and protocol tests", "")
import os
sys.path.insert(0, os.path.dirname(__file__))
from reasons import REASONS
print("| group | category | DMTCP root | DMTCP user | Stasis root | Stasis user | why they differ |")
print("| --- | --- | --- | --- | --- | --- | --- |")
totals = [0, 0, 0, 0]
for n in names:
    cat, note = cats[n]
    cells = []
    for i, r in enumerate(runs):
        v = r.get(n)
        if v is None:
            v = "skipped" if cat == "Disabled tests" else "-"
        if v == "pass":
            totals[i] += 1
        cells.append(v)
    why = ""
    if len(set(cells)) > 1 or "fail" in cells:
        why = REASONS.get(n, "?")
    print(f"| `{n}` | {cat if cat != 'Disabled tests' else 'skipped: ' + note} | " + " | ".join(cells) + f" | {why} |")
print("| **passed** | | " + " | ".join(f"**{t}**" for t in totals) + " | |")
