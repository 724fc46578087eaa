"""Merges gemm-compare JSON files into one markdown table (README, issue 16).

usage: gemm_table.py OUT.json RUN.json... > table.md

Each RUN.json is one `gemm-compare --json` process; a side measured in several runs
keeps its first run's figure (the gemm crate and faer appear in every run).
"""
import json
import sys

out, runs = sys.argv[1], sys.argv[2:]
cells = {}  # (shape, threads) -> {side: gflops}
order, sides, cpu = [], [], None
for path in runs:
    doc = json.load(open(path))
    cpu = cpu or doc["cpu"]
    for row in doc["rows"]:
        key = (row["shape"], row["m"], row["k"], row["n"], row["threads"])
        if key not in cells:
            cells[key] = {}
            order.append(key)
        for side, v in row["gflops"].items():
            if v is None or v != v:
                continue
            name = f"{side} ({row['threads']}t)"
            cells[key].setdefault(side, v)
            if name not in sides:
                sides.append(name)
shapes = []
for key in order:
    s = key[:4]
    if s not in shapes:
        shapes.append(s)
cols = []
for t in sorted({k[4] for k in order}):
    seen = []
    for key in order:
        if key[4] == t:
            for side in cells[key]:
                if side not in seen:
                    seen.append(side)
    cols += [(t, s) for s in seen]
print(f"CPU: {cpu}. GFLOP/s, median of 5 interleaved rounds.\n")
print("| product (m x k x n) | " + " | ".join(f"{s}, {t} thr" for t, s in cols) + " |")
print("| --- |" + " ---: |" * len(cols))
merged = []
for s in shapes:
    vals = []
    for t, side in cols:
        v = cells.get(s + (t,), {}).get(side)
        vals.append("" if v is None else f"{v:.0f}")
    print(f"| {s[0]} ({s[1]}x{s[2]}x{s[3]}) | " + " | ".join(vals) + " |")
    merged.append({"shape": s[0], "m": s[1], "k": s[2], "n": s[3],
                   "gflops": {f"{side} / {t} threads": cells.get(s + (t,), {}).get(side) for t, side in cols}})
json.dump({"cpu": cpu, "runs": runs, "rows": merged}, open(out, "w"), indent=1)
