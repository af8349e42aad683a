"""Turns the raw rows of one scenario into benches/results/<scenario>.{csv,md}.

Called by benches/run.sh; plain python3, no packages. Raw rows (tab-separated):
scenario case front rep requests duration_s p50_ms p99_ms socket_errors
unexpected_status expected_rejections client_ticks front_ticks worker_ticks
rss_front_end_kb rss_front_peak_kb rss_worker_kb n_front_pids [p999_ms
gate_shed gate_limit] (p999_ms -1 when the client gives none; gate_shed: the
gate's own 503 sheds during the run from its /metrics, -1 for other fronts;
gate_limit: its adaptive limit min/median/max sampled every second, or -).

A run is valid when it answered something, had no socket error and no
unexpected status (non-2xx, or for a rejection front anything but the expected
code); invalid runs are listed but not in the medians.
Ratios: --ratio "CASE|NUM|DEN|METRIC|OP|TARGET|LABEL[|TAG]" (OP >=, <=, > or <;
TARGET may be empty): median of NUM over median of DEN. A ratio with a TAG (an
issue number) is also printed as a PASS/MISS line under "Targets (issue TAG)".
--p999 adds a p99.9 column to the tables.

Open-loop runs (benches/openloop.py, scenario overload): --openloop FILE (lines
"case<TAB>front<TAB>rep<TAB>json"), --capacity "CASE|FRONT" (the closed-loop
case whose median req/s is the capacity), --ol-case "NAME=MULTIPLIER" in order
(the smallest multiplier below 1 is the unloaded reference), --ol-front FRONT
(the front the targets judge), --ol-tag TAG: a table per load with medians over
reps, and the overload targets (goodput at the largest load >= 0.9x capacity,
its served p99 <= 3x the unloaded served p99, sheds answered in < 1 ms) as
ratio rows. --main-cases limits the main tables to those cases (the others
are in the open-loop tables; every run stays in the fold). Writes also
<scenario>_openloop.csv (every open-loop run, every field).
"""

import argparse
import csv
import json
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
p.add_argument("--p999", action="store_true")
p.add_argument("--openloop")
p.add_argument("--capacity", default="")
p.add_argument("--capacity-rps", type=float)
p.add_argument("--ol-case", action="append", default=[])
p.add_argument("--ol-front", default="gate")
p.add_argument("--ol-tag", default="")
p.add_argument("--main-cases", default="")
a = p.parse_args()
clk = a.clk

runs = []
with open(a.raw) as f:
    for line in f:
        c = line.rstrip("\n").split("\t")
        if len(c) == 18:
            c.append("-1")
        if len(c) == 19:
            c += ["-1", "-"]
        if len(c) != 21 or c[0] != a.scenario:
            continue
        (_, case, front, rep, req, dur, p50, p99, sock, bad, expected, cti, fti, wti,
         rss_end, rss_peak, rss_w, nfront, p999, gate_shed, gate_limit) = c
        req, dur = int(req), float(dur)
        cti, fti, wti, nfront = int(cti), int(fti), int(wti), int(nfront)
        per_req = lambda t: t / clk * 1e6 / req if req else math.nan
        cores = lambda t: t / clk / dur if dur else math.nan
        server = fti + wti
        runs.append({
            "case": case, "front": front, "rep": int(rep), "requests": req, "dur": dur,
            "rps": req / dur if dur else 0.0,
            "p50_ms": float(p50), "p99_ms": float(p99),
            "p999_ms": float(p999) if float(p999) >= 0 else None,
            "gate_shed": int(gate_shed) if int(gate_shed) >= 0 else None, "gate_limit": gate_limit,
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

METRICS = ["rps", "p50_ms", "p99_ms", "p999_ms", "front_us", "worker_us", "client_us", "per_server_cpu_s",
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

OPS = {">=": lambda v, t: v >= t, "<=": lambda v, t: v <= t, ">": lambda v, t: v > t, "<": lambda v, t: v < t}


def add_ratio(case, pair, metric, val, op, target, label, tag="", invalid=""):
    met = ""
    if target and val is not None:
        met = "yes" if OPS[op](val, float(target)) else "NO"
    elif target and invalid:
        met = "NO"  # the front ran, but no run of it was valid: the target is missed
    elif target:
        met = "n/a"
    ratios.append({"case": case, "pair": pair, "metric": metric, "value": val,
                   "target": f"{op} {target}" if target else "", "met": met, "label": label, "tag": tag,
                   "invalid": invalid})


ratios = []
for spec in a.ratio:
    f = spec.split("|")
    case, num, den, metric, op, target, label = f[:7]
    tag = f[7] if len(f) > 7 else ""
    sn, sd = summary.get((case, num)), summary.get((case, den))
    val = None
    if sn and sd and sn.get(metric) and sd.get(metric) and sd[metric][0]:
        val = sn[metric][0] / sd[metric][0]
    invalid = " and ".join(f"`{n}`" for n, x in ((num, sn), (den, sd)) if x and x["runs"] and not x["valid"])
    add_ratio(case, f"{num}/{den}", metric, val, op, target, label, tag, invalid)

# --- open-loop runs (overload)
ol_runs, ol_sum, ol_cases, capacity = [], {}, [], None
if a.openloop:
    try:
        with open(a.openloop) as f:
            for line in f:
                case, front, rep, js = line.rstrip("\n").split("\t", 3)
                d = json.loads(js)
                d.update({"case": case, "front": front, "rep": int(rep)})
                ol_runs.append(d)
    except OSError:
        pass
    ol_cases = [(x.split("=", 1)[0], float(x.split("=", 1)[1])) for x in a.ol_case]
    if a.capacity_rps:
        capacity = a.capacity_rps
    elif a.capacity:
        cc, cf = a.capacity.split("|")
        cs = summary.get((cc, cf))
        capacity = cs["rps"][0] if cs and cs.get("rps") else None
    for case, _mult in ol_cases:
        for fr in fronts:
            mine = [d for d in ol_runs if d["case"] == case and d["front"] == fr]
            if not mine:
                continue
            agg = {"runs": len(mine)}
            for k in mine[0]:
                vals = [d[k] for d in mine if isinstance(d.get(k), (int, float)) and not isinstance(d.get(k), bool)]
                if vals:
                    agg[k] = statistics.median(vals)
            st = {}
            for d in mine:
                for code, n in d.get("status", {}).items():
                    st[code] = st.get(code, 0) + n
            agg["status"] = st
            ol_sum[(case, fr)] = agg
    unl = [c for c in ol_cases if c[1] < 1]
    top = max(ol_cases, key=lambda c: c[1]) if ol_cases else None
    if top:
        tc, tm = top
        g = ol_sum.get((tc, a.ol_front), {})
        val = g.get("goodput_rps") / capacity if capacity and g.get("goodput_rps") is not None else None
        add_ratio(tc, f"{a.ol_front}/capacity", "goodput_rps", val, ">=", "0.9",
                  f"{a.ol_front} goodput at {tm:g}× capacity / capacity", a.ol_tag)
        if unl:
            u = ol_sum.get((unl[0][0], a.ol_front), {})
            val = (g["ok_p99_ms"] / u["ok_p99_ms"]) if g.get("ok_p99_ms") and u.get("ok_p99_ms") else None
            add_ratio(tc, f"{a.ol_front}/{a.ol_front}@{unl[0][0]}", "ok_p99_ms", val, "<=", "3",
                      f"{a.ol_front} p99 of served requests at {tm:g}× / unloaded ({unl[0][1]:g}×) p99", a.ol_tag)
        val = g.get("shed_sent_p99_ms")
        add_ratio(tc, f"{a.ol_front}/1ms", "shed_sent_p99_ms", val, "<", "1",
                  f"{a.ol_front} p99 of sheds at {tm:g}× (ms from send) / 1 ms"
                  + ("" if g.get("shed") else " (no shed)"), a.ol_tag)
        # The same targets once the front has settled: requests due after
        # openloop.py's --settle (its first reaction to the load left out).
        if g.get("settle_s") is not None:
            after = f"requests due after the first {g['settle_s']:g} s"
            val = g.get("steady_goodput_rps") / capacity if capacity and g.get("steady_goodput_rps") is not None else None
            add_ratio(tc, f"{a.ol_front}/capacity (settled)", "steady_goodput_rps", val, ">=", "0.9",
                      f"{a.ol_front} goodput at {tm:g}× capacity / capacity, {after}", a.ol_tag)
            if unl:
                u = ol_sum.get((unl[0][0], a.ol_front), {})
                val = (g["steady_ok_p99_ms"] / u["ok_p99_ms"]) if g.get("steady_ok_p99_ms") and u.get("ok_p99_ms") else None
                add_ratio(tc, f"{a.ol_front}/{a.ol_front}@{unl[0][0]} (settled)", "steady_ok_p99_ms", val, "<=", "3",
                          f"{a.ol_front} p99 of served requests at {tm:g}× / unloaded p99, {after}", a.ol_tag)
            val = g.get("steady_shed_sent_p99_ms")
            add_ratio(tc, f"{a.ol_front}/1ms (settled)", "steady_shed_sent_p99_ms", val, "<", "1",
                      f"{a.ol_front} p99 of sheds at {tm:g}× (ms from send) / 1 ms, {after}", a.ol_tag)
        for fr in fronts:
            if fr == a.ol_front:
                continue
            o = ol_sum.get((tc, fr), {})
            if capacity and o.get("goodput_rps") is not None:
                add_ratio(tc, f"{fr}/capacity", "goodput_rps", o["goodput_rps"] / capacity, "", "",
                          f"{fr} goodput at {tm:g}× capacity / capacity (context)")

unit = a.unit
FMT = {"rps": "{:.0f}", "p50_ms": "{:.2f}", "p99_ms": "{:.2f}", "p999_ms": "{:.2f}", "front_us": "{:.1f}",
       "worker_us": "{:.1f}", "client_us": "{:.1f}", "per_server_cpu_s": "{:.0f}", "per_front_cpu_s": "{:.0f}",
       "rss_peak_mib": "{:.1f}", "rss_end_mib": "{:.1f}", "rss_worker_mib": "{:.1f}"}


def cell(s, m, minmax=True):
    if not s or not s.get(m):
        return "—"
    med, lo, hi = (FMT[m].format(v) for v in s[m])
    return f"{med} ({lo}–{hi})" if minmax and s["valid"] > 1 else med


def cores(s):
    parts = []
    for k in ("client_cores", "front_cores", "worker_cores"):
        parts.append("—" if not s or not s.get(k) else f"{s[k][0]:.2f}")
    return " / ".join(parts)


def ms(v, nd=2):
    return "—" if v is None else f"{v:.{nd}f}"


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
shedding = [r for r in runs if r["gate_shed"]]
if shedding:
    md += ["- **the gate answered 503 itself (sheds, from its /metrics) in these runs: "
           + "; ".join(f"{r['front']} {r['case'] + ' ' if r['case'] != '-' else ''}rep {r['rep']}: "
                       f"{r['gate_shed']} of {r['requests']}, {(r['requests'] - r['gate_shed']) / (r['dur'] or 1):.0f}/s not shed"
                       f"{'' if r['valid'] else ' (invalid run)'}"
                       for r in shedding)
           + "** (to a closed-loop client a 503 is an unexpected status, which makes the run invalid)", ""]
per = "msg" if unit == "messages" else "req"
main_cases = [c for c in cases if not a.main_cases or c in a.main_cases.split()]
p999 = a.p999
for case in main_cases:
    if len(cases) > 1 or case != "-":
        md += [f"## {case}" + (f": {case_desc[case]}" if case_desc.get(case) else ""), ""]
    md += [f"| front | valid | {unit}/s | p50 ms | p99 ms | " + ("p99.9 ms | " if p999 else "") +
           f"front CPU µs/{per} | worker CPU µs/{per} | "
           f"client CPU µs/{per} | {per} per front CPU-s | {per} per server CPU-s | cores client / front / worker | "
           "front RSS MiB (peak) |",
           "| --- " * (13 if p999 else 12) + "|"]
    for fr in fronts:
        s = summary.get((case, fr))
        if not s:
            continue
        md.append(f"| {fr} | {s['valid']}/{s['runs']} | {cell(s, 'rps')} | {cell(s, 'p50_ms', False)} | "
                  f"{cell(s, 'p99_ms')} | " + (f"{cell(s, 'p999_ms')} | " if p999 else "") +
                  f"{cell(s, 'front_us', False)} | {cell(s, 'worker_us', False)} | "
                  f"{cell(s, 'client_us', False)} | {cell(s, 'per_front_cpu_s', False)} | "
                  f"{cell(s, 'per_server_cpu_s', False)} | {cores(s)} | "
                  f"{cell(s, 'rss_peak_mib', False)} |")
    md.append("")

if a.openloop:
    cc = a.capacity.split("|") if a.capacity else ["", ""]
    how = ("given (OL_CAPACITY)" if a.capacity_rps else f"median closed-loop req/s of `{cc[1]}` in case `{cc[0]}`")
    md += [f"## open loop (benches/openloop.py): capacity {'n/a' if capacity is None else f'{capacity:.0f}'} req/s"
           f" ({how})", "",
           "Each load sends capacity × multiplier requests per second at even intervals, whatever the front answers;"
           " latencies run from the moment a request was *due*, so waiting for a connection counts (no coordinated"
           " omission); *lag* is the generator's own scheduling delay (due → handed to a connection or its backlog),"
           " large only when the generator, not the front, fell behind; *queued*: requests that waited in the"
           " generator for a connection, all its connections being busy with the front; *from send* excludes"
           " that wait. Goodput: 2xx answers completed inside the sending window per"
           " second. Shed: non-2xx answers (the gate's 503 `service_unavailable`). Unanswered: no answer by the end of"
           " the grace period. Medians over reps; statuses summed.", ""]
    for case, mult in ol_cases:
        rate = capacity * mult if capacity else None
        md += [f"### {case}: {mult:g}× capacity" + (f" = {rate:.0f} req/s offered" if rate else "")
               + (" (the unloaded reference)" if mult < 1 else ""), "",
               "| front | runs | dispatched/s | lag p99 ms | queued | goodput 2xx/s (× capacity) | served p50 / p99 / p99.9 ms | "
               "served p99 ms from send | shed share | shed p50 / p99 / max ms from send | statuses | unanswered | "
               "errors | cores client / front / worker | gate limit min/med/max |",
               "| --- " * 15 + "|"]
        for fr in fronts:
            g = ol_sum.get((case, fr))
            if not g:
                continue
            sent_rate = g["due"] / g["send_s"] if g.get("send_s") else None
            gp = g.get("goodput_rps")
            gx = f" ({gp / capacity:.2f}×)" if capacity and gp is not None else ""
            st = ", ".join(f"{k}: {v}" for k, v in sorted(g["status"].items()))
            md.append(f"| {fr} | {g['runs']} | {ms(sent_rate, 0)} | {ms(g.get('lag_p99_ms'))} | "
                      f"{g.get('queued', 0):.0f} | {ms(gp, 0)}{gx} | "
                      f"{ms(g.get('ok_p50_ms'))} / {ms(g.get('ok_p99_ms'))} / {ms(g.get('ok_p999_ms'))} | "
                      f"{ms(g.get('ok_sent_p99_ms'))} | {g.get('shed_share', 0) * 100:.1f}% | "
                      f"{ms(g.get('shed_sent_p50_ms'), 3)} / {ms(g.get('shed_sent_p99_ms'), 3)} / "
                      f"{ms(g.get('shed_sent_max_ms'), 3)} | {st or '—'} | {g.get('unanswered', 0):.0f} | "
                      f"{g.get('errors', 0):.0f} | {cores(summary.get((case, fr)))} | "
                      + (", ".join(r["gate_limit"] for r in runs if r["case"] == case and r["front"] == fr
                                   and r["gate_limit"] not in ("-", "")) or "—") + " |")
        md.append("")

mine = [r for r in ratios]
if mine:
    md += ["| ratio (medians, same run) | measured | target | met |", "| --- | --- | --- | --- |"]
    for r in mine:
        where = f"{r['case']}: " if len(cases) > 1 else ""
        v = "n/a" if r["value"] is None else f"{r['value']:.2f}×"
        if r["value"] is None and r.get("invalid"):
            v = f"n/a (no valid run of {r['invalid']})"
        md.append(f"| {where}{r['label']} | {v} | {r['target'] or '—'} | {r['met'] or '—'} |")
    md.append("")
tags = []
for r in ratios:
    if r.get("tag") and r["tag"] not in tags:
        tags.append(r["tag"])
for tag in tags:
    md += [f"### Targets (issue {tag}), measured in this run", ""]
    for r in ratios:
        if r.get("tag") != tag:
            continue
        word = {"yes": "PASS", "NO": "MISS"}.get(r["met"], "N/A (a front not measured in this run)")
        v = "n/a" if r["value"] is None else f"{r['value']:.3f}×"
        if r["value"] is None and r.get("invalid"):
            v = f"n/a: no valid run of {r['invalid']} (see the notes)"
        where = f"{r['case']}: " if r["case"] not in ("-", "") else ""
        md.append(f"- {word} — {where}{r['label']}: measured {v}, target {r['target']}")
    md.append("")
md += ["<details><summary>every run, in the order it ran</summary>", "",
       f"| case | rep | front | {unit} | {unit}/s | p50 ms | p99 ms | " + ("p99.9 ms | " if p999 else "") +
       "socket err | unexpected status | expected rejections | front µs | worker µs | client µs | "
       "gate sheds | gate limit min/med/max | valid |",
       "| --- " * (17 if p999 else 16) + "|"]
f1 = lambda v: "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"
for r in runs:
    md.append(f"| {r['case']} | {r['rep']} | {r['front']} | {r['requests']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | "
              f"{r['p99_ms']:.2f} | " + (f"{ms(r['p999_ms'])} | " if p999 else "") +
              f"{r['socket_errors']} | {r['unexpected_status']} | {r['expected_rejections']} | "
              f"{f1(r['front_us'])} | {f1(r['worker_us'])} | {f1(r['client_us'])} | "
              f"{'—' if r['gate_shed'] is None else r['gate_shed']} | "
              f"{'—' if r['gate_limit'] in ('-', '') else r['gate_limit']} | {'yes' if r['valid'] else 'NO'} |")
md += ["", "</details>"]
text = "\n".join(md) + "\n"
with open(f"{a.out_dir}/{a.scenario}.md", "w") as f:
    f.write(text)
print(text)

COLS = ["record", "case", "front", "rep", "valid", "requests", "rps", "p50_ms", "p99_ms", "socket_errors",
        "unexpected_status", "expected_rejections", "client_cpu_us", "front_cpu_us", "worker_cpu_us",
        "per_server_cpu_s", "per_front_cpu_s", "client_cores", "front_cores", "worker_cores",
        "rss_front_end_mib", "rss_front_peak_mib", "rss_worker_mib",
        "ratio_metric", "ratio", "target", "met", "label", "p999_ms", "tag", "gate_shed", "gate_limit"]
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
                    r["expected_rejections"], *(r4(r[k]) for k in KEYS[6:])] + [""] * 5 + [r4(r["p999_ms"]), "",
                    "" if r["gate_shed"] is None else r["gate_shed"],
                    "" if r["gate_limit"] in ("-", "") else r["gate_limit"]])
    for i, stat in enumerate(["median", "min", "max"]):
        for (case, fr), s in summary.items():
            g = lambda m: r4(s[m][i]) if m and s.get(m) else ""
            w.writerow([stat, case, fr, "", s["valid"], "", g("rps"), g("p50_ms"), g("p99_ms"), "", "", "",
                        *(g(k) for k in KEYS[6:])] + [""] * 5 + [g("p999_ms"), ""])
    for r in ratios:
        w.writerow(["ratio", r["case"], r["pair"]] + [""] * 20 +
                   [r["metric"], r4(r["value"]), r["target"], r["met"], r["label"], "", r.get("tag", "")])

if a.openloop:
    keys = []
    for d in ol_runs:
        for k in d:
            if k not in keys and k not in ("case", "front", "rep"):
                keys.append(k)
    with open(f"{a.out_dir}/{a.scenario}_openloop.csv", "w", newline="") as f:
        f.write(f"# scenario: {a.scenario} ({a.title}), every open-loop run (benches/openloop.py)\n")
        for k, v in meta:
            f.write(f"# {k}: {v}\n")
        f.write(f"# capacity_rps: {'' if capacity is None else round(capacity, 1)}\n")
        w = csv.writer(f)
        w.writerow(["case", "front", "rep"] + keys)
        for d in ol_runs:
            w.writerow([d["case"], d["front"], d["rep"]] +
                       [json.dumps(d[k], separators=(",", ":")) if isinstance(d.get(k), dict) else d.get(k, "")
                        for k in keys])
