"""Turns the raw rows of one scenario into benches/results/<scenario>.{csv,md}.

Called by benches/run.sh; plain python3, no packages. Raw rows (tab-separated):
scenario case front rep requests duration_s p50_ms p99_ms socket_errors
unexpected_status expected_rejections client_ticks front_ticks worker_ticks
rss_front_end_kb rss_front_peak_kb rss_worker_kb n_front_pids

A run is valid when it answered something, had no socket error and no
unexpected status (non-2xx, or for a rejection front anything but the expected
code); invalid runs are listed but not in the medians.
Ratios: --ratio "CASE|NUM|DEN|METRIC|OP|TARGET|LABEL" (OP >= or <=, TARGET may be
empty): median of NUM over median of DEN.
"""

import argparse
import csv
import math
import statistics

p = argparse.ArgumentParser()
p.add_argument("--raw", required=True)
p.add_argument("--scenario", required=True)
p.add_argument("--title", required=True)
p.add_argument("--out-dir", required=True)
p.add_argument("--clk", type=int, required=True)
p.add_argument("--meta", action="append", default=[], help="key=value, in order")
p.add_argument("--desc", action="append", default=[])
p.add_argument("--note", action="append", default=[])
p.add_argument("--front", action="append", default=[], help="name=description, in order")
p.add_argument("--case", action="append", default=[], help="name=description, in order")
p.add_argument("--ratio", action="append", default=[])
p.add_argument("--unit", default="requests")
a = p.parse_args()
clk = a.clk

runs = []
with open(a.raw) as f:
    for line in f:
        c = line.rstrip("\n").split("\t")
        if len(c) != 18 or c[0] != a.scenario:
            continue
        (_, case, front, rep, req, dur, p50, p99, sock, bad, expected, cti, fti, wti,
         rss_end, rss_peak, rss_w, nfront) = c
        req, dur = int(req), float(dur)
        cti, fti, wti, nfront = int(cti), int(fti), int(wti), int(nfront)
        per_req = lambda t: t / clk * 1e6 / req if req else math.nan
        cores = lambda t: t / clk / dur if dur else math.nan
        server = fti + wti
        runs.append({
            "case": case, "front": front, "rep": int(rep), "requests": req,
            "rps": req / dur if dur else 0.0,
            "p50_ms": float(p50), "p99_ms": float(p99),
            "socket_errors": int(sock), "unexpected_status": int(bad), "expected_rejections": int(expected),
            "valid": req > 0 and int(sock) == 0 and int(bad) == 0,
            "client_us": per_req(cti),
            "front_us": per_req(fti) if nfront else None,
            "worker_us": per_req(wti),
            "per_server_cpu_s": req / (server / clk) if server else None,
            "per_front_cpu_s": req / (fti / clk) if nfront and fti else None,
            "client_cores": cores(cti), "front_cores": cores(fti) if nfront else None,
            "worker_cores": cores(wti),
            "rss_end_mib": int(rss_end) / 1024, "rss_peak_mib": int(rss_peak) / 1024,
            "rss_worker_mib": int(rss_w) / 1024,
        })

fronts = [x.split("=", 1)[0] for x in a.front]
front_desc = dict(x.split("=", 1) for x in a.front)
cases = [x.split("=", 1)[0] for x in a.case] or sorted({r["case"] for r in runs})
case_desc = dict(x.split("=", 1) for x in a.case)
for r in runs:  # fronts seen but not declared still show
    if r["front"] not in fronts:
        fronts.append(r["front"])

METRICS = ["rps", "p50_ms", "p99_ms", "front_us", "worker_us", "client_us", "per_server_cpu_s",
           "per_front_cpu_s", "client_cores", "front_cores", "worker_cores", "rss_end_mib",
           "rss_peak_mib", "rss_worker_mib"]
summary = {}
for case in cases:
    for fr in fronts:
        mine = [r for r in runs if r["case"] == case and r["front"] == fr]
        if not mine:
            continue
        good = [r for r in mine if r["valid"]]
        s = {"runs": len(mine), "valid": len(good)}
        for m in METRICS:
            vals = [r[m] for r in good if r[m] is not None and not math.isnan(r[m])]
            s[m] = (statistics.median(vals), min(vals), max(vals)) if vals else None
        summary[(case, fr)] = s

ratios = []
for spec in a.ratio:
    case, num, den, metric, op, target, label = spec.split("|")
    sn, sd = summary.get((case, num)), summary.get((case, den))
    val = None
    if sn and sd and sn.get(metric) and sd.get(metric) and sd[metric][0]:
        val = sn[metric][0] / sd[metric][0]
    met = ""
    if target and val is not None:
        t = float(target)
        met = "yes" if (val >= t if op == ">=" else val <= t) else "NO"
    elif target:
        met = "n/a"
    ratios.append({"case": case, "pair": f"{num}/{den}", "metric": metric, "value": val,
                   "target": f"{op} {target}" if target else "", "met": met, "label": label})

unit = a.unit
FMT = {"rps": "{:.0f}", "p50_ms": "{:.2f}", "p99_ms": "{:.2f}", "front_us": "{:.1f}", "worker_us": "{:.1f}",
       "client_us": "{:.1f}", "per_server_cpu_s": "{:.0f}", "per_front_cpu_s": "{:.0f}",
       "rss_peak_mib": "{:.1f}", "rss_end_mib": "{:.1f}", "rss_worker_mib": "{:.1f}"}


def cell(s, m, minmax=True):
    if not s or not s.get(m):
        return "—"
    med, lo, hi = (FMT[m].format(v) for v in s[m])
    return f"{med} ({lo}–{hi})" if minmax and s["valid"] > 1 else med


def cores(s):
    parts = []
    for k in ("client_cores", "front_cores", "worker_cores"):
        parts.append("—" if not s.get(k) else f"{s[k][0]:.2f}")
    return " / ".join(parts)


meta = [x.split("=", 1) for x in a.meta]
md = [f"# {a.title}", ""]
md += [f"- {k}: `{v}`" if k == "command" else f"- {k}: {v}" for k, v in meta]
md += [f"- {d}" for d in a.desc]
md += [f"- front `{k}`: {v}" for k, v in front_desc.items() if v]
md += [f"- **{n}**" for n in a.note]
md += ["- medians over valid runs, (min–max) when more than one; a run with a socket error or an unexpected"
       " status is invalid and left out. CPU from utime+stime in /proc: *front* = the proxy's processes"
       " (— when the client talks to uvicorn itself), *worker* = the uvicorn process, *client* = the load"
       " generator; server = front + worker; cores = CPU-seconds per second of the run. RSS = summed VmRSS of the front's processes"
       " (of uvicorn when there is no proxy), peak sampled every 0.2 s.", ""]
per = "msg" if unit == "messages" else "req"
for case in cases:
    if len(cases) > 1 or case != "-":
        md += [f"## {case}" + (f": {case_desc[case]}" if case_desc.get(case) else ""), ""]
    md += [f"| front | valid | {unit}/s | p50 ms | p99 ms | front CPU µs/{per} | worker CPU µs/{per} | "
           f"client CPU µs/{per} | {per} per front CPU-s | {per} per server CPU-s | cores client / front / worker | "
           "front RSS MiB (peak) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for fr in fronts:
        s = summary.get((case, fr))
        if not s:
            continue
        md.append(f"| {fr} | {s['valid']}/{s['runs']} | {cell(s, 'rps')} | {cell(s, 'p50_ms', False)} | "
                  f"{cell(s, 'p99_ms')} | {cell(s, 'front_us', False)} | {cell(s, 'worker_us', False)} | "
                  f"{cell(s, 'client_us', False)} | {cell(s, 'per_front_cpu_s', False)} | "
                  f"{cell(s, 'per_server_cpu_s', False)} | {cores(s)} | "
                  f"{cell(s, 'rss_peak_mib', False)} |")
    md.append("")
mine = [r for r in ratios]
if mine:
    md += ["| ratio (medians, same run) | measured | target | met |", "| --- | --- | --- | --- |"]
    for r in mine:
        where = f"{r['case']}: " if len(cases) > 1 else ""
        v = "n/a" if r["value"] is None else f"{r['value']:.2f}×"
        md.append(f"| {where}{r['label']} | {v} | {r['target'] or '—'} | {r['met'] or '—'} |")
    md.append("")
md += ["<details><summary>every run, in the order it ran</summary>", "",
       f"| case | rep | front | {unit} | {unit}/s | p50 ms | p99 ms | socket err | unexpected status | "
       "expected rejections | front µs | worker µs | client µs | valid |",
       "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
f1 = lambda v: "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"
for r in runs:
    md.append(f"| {r['case']} | {r['rep']} | {r['front']} | {r['requests']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | "
              f"{r['p99_ms']:.2f} | {r['socket_errors']} | {r['unexpected_status']} | {r['expected_rejections']} | "
              f"{f1(r['front_us'])} | {f1(r['worker_us'])} | {f1(r['client_us'])} | {'yes' if r['valid'] else 'NO'} |")
md += ["", "</details>"]
text = "\n".join(md) + "\n"
with open(f"{a.out_dir}/{a.scenario}.md", "w") as f:
    f.write(text)
print(text)

COLS = ["record", "case", "front", "rep", "valid", "requests", "rps", "p50_ms", "p99_ms", "socket_errors",
        "unexpected_status", "expected_rejections", "client_cpu_us", "front_cpu_us", "worker_cpu_us",
        "per_server_cpu_s", "per_front_cpu_s", "client_cores", "front_cores", "worker_cores",
        "rss_front_end_mib", "rss_front_peak_mib", "rss_worker_mib",
        "ratio_metric", "ratio", "target", "met", "label"]
KEYS = ["rps", "p50_ms", "p99_ms", None, None, None, "client_us", "front_us", "worker_us", "per_server_cpu_s",
        "per_front_cpu_s", "client_cores", "front_cores", "worker_cores", "rss_end_mib", "rss_peak_mib",
        "rss_worker_mib"]
r4 = lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else round(v, 4)
with open(f"{a.out_dir}/{a.scenario}.csv", "w", newline="") as f:
    f.write(f"# scenario: {a.scenario} ({a.title})\n")
    for k, v in meta:
        f.write(f"# {k}: {v}\n")
    for n in a.note:
        f.write(f"# {n}\n")
    w = csv.writer(f)
    w.writerow(COLS)
    for r in runs:
        w.writerow(["run", r["case"], r["front"], r["rep"], int(r["valid"]), r["requests"], r4(r["rps"]),
                    r4(r["p50_ms"]), r4(r["p99_ms"]), r["socket_errors"], r["unexpected_status"],
                    r["expected_rejections"], *(r4(r[k]) for k in KEYS[6:])] + [""] * 5)
    for i, stat in enumerate(["median", "min", "max"]):
        for (case, fr), s in summary.items():
            g = lambda m: r4(s[m][i]) if m and s.get(m) else ""
            w.writerow([stat, case, fr, "", s["valid"], "", g("rps"), g("p50_ms"), g("p99_ms"), "", "", "",
                        *(g(k) for k in KEYS[6:])] + [""] * 5)
    for r in ratios:
        w.writerow(["ratio", r["case"], r["pair"]] + [""] * 20 +
                   [r["metric"], r4(r["value"]), r["target"], r["met"], r["label"]])
