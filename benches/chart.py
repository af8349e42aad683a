"""benches/results/ratios.png: every ratio of every scenario's CSV, with its target.

    benches/.venv/bin/python benches/chart.py benches/results

Green: target met; red: not met; grey: no target (context only). The header
names the machine, date, commit and command of the scenarios' own files.
"""

import csv
import glob
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ORDER = ["hello", "offload", "io_bound", "overload", "auth_small", "reject", "ws", "h2c"]


def load(path):
    meta, rows = {}, []
    with open(path) as f:
        lines = []
        for line in f:
            if line.startswith("# ") and ":" in line:
                k, v = line[2:].split(":", 1)
                meta.setdefault(k.strip(), v.strip())
            else:
                lines.append(line)
    for r in csv.DictReader(lines):
        if r.get("record") == "ratio":
            rows.append(r)
    return meta, rows


def main(out_dir):
    files = sorted(glob.glob(os.path.join(out_dir, "*.csv")),
                   key=lambda p: (ORDER.index(os.path.basename(p)[:-4])
                                  if os.path.basename(p)[:-4] in ORDER else 99, p))
    bars, metas = [], []
    for path in files:
        scen = os.path.basename(path)[:-4]
        meta, rows = load(path)
        if not rows:
            continue
        metas.append((scen, meta))
        for r in rows:
            case = "" if r["case"] in ("-", "") else f" [{r['case']}]"
            val = float(r["ratio"]) if r["ratio"] else None
            tgt = r["target"].split() if r["target"] else None
            bars.append((f"{scen}{case}: {r['label']}", val, tgt, r["met"]))
    if not bars:
        print("chart: no ratio rows in", out_dir)
        return
    fig_h = 1.6 + 0.34 * len(bars)
    fig, ax = plt.subplots(figsize=(11, fig_h))
    ys = list(range(len(bars)))[::-1]
    for y, (label, val, tgt, met) in zip(ys, bars):
        color = {"yes": "#2e8b57", "NO": "#c0392b"}.get(met, "#999999")
        if val is not None:
            ax.barh(y, val, color=color, height=0.6)
            ax.text(val, y, f" {val:.2f}×", va="center", fontsize=8)
        else:
            ax.text(0.11, y, " n/a (skipped or no valid run)", va="center", fontsize=8, color="#666666")
        if tgt:
            t = float(tgt[1])
            ax.plot([t, t], [y - 0.4, y + 0.4], color="black", linewidth=2)
            ax.text(t, y + 0.32, f"{tgt[0]} {t:g}", fontsize=6, ha="center")
    vals = [b[1] for b in bars if b[1]] + [float(b[2][1]) for b in bars if b[2]]
    ax.set_xscale("log")
    ax.set_xlim(min(0.1, min(vals) / 1.5), max(vals) * 2)
    ax.set_yticks(ys)
    ax.set_yticklabels([b[0] for b in bars], fontsize=8)
    ax.axvline(1.0, color="#555555", linewidth=0.8, linestyle=":")
    ax.set_xlabel("ratio of medians (same run, log scale); black tick = target")
    first = metas[0][1]
    commits = sorted({m.get("commit", "?") for _, m in metas})
    dates = sorted({m.get("date", "?") for _, m in metas})
    ax.set_title(f"asgi-gate load benches — {first.get('machine', '?')}\n"
                 f"{dates[0]}{' … ' + dates[-1] if len(dates) > 1 else ''}; commit {', '.join(commits)}",
                 fontsize=9)
    cmds = sorted({m.get("command", "?") for _, m in metas})
    fig.text(0.01, 0.005, "command: " + " | ".join(cmds), fontsize=6, family="monospace")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    out = os.path.join(out_dir, "ratios.png")
    fig.savefig(out, dpi=110)
    print("chart: wrote", out)


main(sys.argv[1] if len(sys.argv) > 1 else "benches/results")
