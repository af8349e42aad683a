"""Reads one load client's output; prints one line:
requests duration_s p50_ms p99_ms socket_errors non2xx p999_ms

    python3 parse_client.py wrk|h2c|h1|ws|openloop CLIENT_OUTPUT [H2LOAD_LOG]

wrk: the RESULT line of benches' report.lua (wrk counts status >= 400 as
`status`; p99.9 from its done() hook, wrk's --latency stops at p99).
h2load (h2c, h1): its summary, with latencies from its --log-file.
ws: the RESULT line of ws_client.py (messages echoed, not requests; no p99.9).
openloop: the RESULT line of openloop.py: requests answered, the run's wall
time (sending window + drain), p50/p99/p99.9 of the 2xx answers (from the time each request was due),
connection errors, non-2xx answers (the full record is its JSON line).
p999_ms is -1 when the client does not give it.
Exits 1 when the output has no result.
"""

import json
import re
import sys


def pct(sorted_vals, p):
    if not sorted_vals:
        return 0.0
    i = min(len(sorted_vals) - 1, max(0, round(p / 100 * len(sorted_vals)) - 1))
    return sorted_vals[i]


def wrk(text):
    lines = [l for l in text.splitlines() if l.startswith("RESULT ")]
    if not lines:
        return None
    f = [int(float(x)) for x in lines[-1].split()[1:]]
    req, dur_us, p50, p99, con, rd, wr, to, st = f[:9]
    p999 = f[9] / 1000 if len(f) > 9 else -1
    return req, dur_us / 1e6, p50 / 1000, p99 / 1000, con + rd + wr + to, st, p999


def h2load(text, logfile):
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
    s = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    r = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    if not (m and s and r):
        return None
    c2, c3, c4, c5 = (int(x) for x in s.groups())
    # h2load's req/s covers its measuring window only (the warm-up excluded).
    rate = float(m.group(3))
    dur = (c2 + c3 + c4 + c5) / rate if rate else float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    _total, _started, _done, _ok, _failed, errored, timeout = (int(x) for x in r.groups())
    lat = []
    try:
        with open(logfile) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 3:
                    lat.append(int(parts[2]) / 1000)
    except OSError:
        pass
    lat.sort()
    return (c2 + c3 + c4 + c5, dur, pct(lat, 50), pct(lat, 99), errored + timeout, c4 + c5,
            pct(lat, 99.9) if lat else -1)


def ws(text):
    lines = [l for l in text.splitlines() if l.startswith("RESULT ")]
    if not lines:
        return None
    d = json.loads(lines[-1][len("RESULT "):])
    return d["messages"], d["seconds"], d["p50_ms"], d["p99_ms"], d["errors"], 0, -1


def openloop(text):
    lines = [l for l in text.splitlines() if l.startswith("RESULT ")]
    if not lines:
        return None
    d = json.loads(lines[-1][len("RESULT "):])
    v = lambda k: -1 if d.get(k) is None else d[k]
    # The whole run (window + drain): CPU per second spans both.
    return (d["answered"], d.get("wall_s") or d["duration_s"], max(0, v("ok_p50_ms")), max(0, v("ok_p99_ms")), d["errors"],
            d["shed"], v("ok_p999_ms"))


def main():
    kind, out = sys.argv[1], sys.argv[2]
    text = open(out, errors="replace").read()
    if kind == "wrk":
        res = wrk(text)
    elif kind in ("h2c", "h1"):
        res = h2load(text, sys.argv[3] if len(sys.argv) > 3 else "")
    elif kind == "ws":
        res = ws(text)
    elif kind == "openloop":
        res = openloop(text)
    else:
        sys.exit(f"unknown client {kind}")
    if res is None:
        sys.exit(1)
    req, dur, p50, p99, sock, non2xx, p999 = res
    print(f"{req} {dur:.4f} {p50:.4f} {p99:.4f} {sock} {non2xx} {p999:.4f}")


main()
