#!/usr/bin/env bash
# Where the time of a refused request goes at 3× the worker's capacity, as the
# overload scenario runs it (one gate thread, one uvicorn worker, the
# open-loop generator at real-time priority, all on this machine): for every
# 503 the gate writes, the time from its request reaching the gate's socket
# to the 503 leaving, split with bpftrace into
#   - off CPU: the gate's thread was runnable (woken or preempted) but another
#     task held every CPU, and which tasks those were;
#   - on CPU: the gate ran (this request and whatever else was ready).
# Beside it, the generator's own figure (p99 of sheds from send, the number
# the overload target is judged on) from the same run.
#
#   bash benches/shed_wait.sh                  # capacity measured (wrk, gate_off)
#   OL_CAPACITY=1387 LOAD=3 bash benches/shed_wait.sh
#
# Needs root (bpftrace; Debian's package is installed when missing). Env:
# OL_CAPACITY, LOAD (3), SEND_S (10 s of sending), TRACE_S (5 s traced in
# the middle), GATE_BIN, OUT_DIR, OL_RT (1: generator at chrt -f 10, as the
# overload scenario), KEEP_TMP=1. Writes benches/results/shed_wait.md.
set -euo pipefail
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=benches/lib.sh
source "$BENCH_DIR/lib.sh"
# shellcheck source=benches/scenarios/common.sh
source "$BENCH_DIR/scenarios/common.sh"
cd "$REPO"

LOAD="${LOAD:-3}"
SEND_S="${SEND_S:-10}"
TRACE_S="${TRACE_S:-5}"
COMMAND="${OL_CAPACITY:+OL_CAPACITY=$OL_CAPACITY }LOAD=$LOAD SEND_S=$SEND_S TRACE_S=$TRACE_S ${GATE_BIN_GIVEN:+GATE_BIN=$GATE_BIN_GIVEN }bash benches/shed_wait.sh"
((EUID == 0)) || die "bpftrace needs root"
ensure_tools wrk:wrk curl:curl bpftrace:bpftrace
ensure_gate
bash scripts/setup-python.sh >&2
init_tmp
install_traps
machine_meta
mkdir -p "$OUT_DIR" "$TMP/sw"
SOCK="$TMP/app.sock"
start_uvicorn_uds app "$SOCK"
top="compression:
  algorithms: [gzip]
  levels: { gzip: $GZIP_LEVEL }
limits:
  max_connections_per_ip: 100000"

cap="${OL_CAPACITY:-}"
if [[ -z "$cap" ]]; then
    gate_off_yaml "$TMP/sw/gate_off.yaml" "$top"
    start_gate gate_off "$GATE2_PORT" "$TMP/sw/gate_off.yaml"
    off_pid="$REPLY"
    wrk -t1 -c64 -d2s -H 'Accept-Encoding: gzip' "http://127.0.0.1:$GATE2_PORT/api/big" >/dev/null
    cap="$(wrk -t1 -c64 -d7s -H 'Accept-Encoding: gzip' "http://127.0.0.1:$GATE2_PORT/api/big" |
        awk '/^Requests\/sec:/ {print $2}')"
    kill_wait "$off_pid"
    forget_pid "$off_pid"
    [[ -n "$cap" ]] || die "no capacity from wrk"
    log "capacity (wrk -c64 against gate_off): $cap req/s"
fi
rate="$(python3 -c "print(round($cap * $LOAD, 1))")"

gate_yaml "$TMP/sw/gate.yaml" "$GATE_PORT" "$ADMIN_PORT" "$top"
start_gate gate "$GATE_PORT" "$TMP/sw/gate.yaml"
gate_pid="$REPLY"
ol() {
    timeout -k 5 $(($1 + ${OL_GRACE%.*} + 60)) "${OL_PRIO[@]}" "$PYVENV/bin/python" "$BENCH_DIR/openloop.py" \
        --port "$GATE_PORT" --path /api/big --rate "$2" --duration "$1" --max-conns "$OL_MAX_CONNS" \
        --grace "$OL_GRACE" -H 'Accept-Encoding: gzip'
}
# Warm-up at capacity: the limit learns the worker before the measured run.
ol 3 "$cap" >/dev/null
sleep 1
ol "$SEND_S" "$rate" >"$TMP/sw/ol.txt" &
ol_pid=$!
sleep "$(python3 -c "print(max(1.0, ($SEND_S - $TRACE_S) / 2))")"
# bpftrace wants a larger locked-memory limit than some containers allow;
# it still runs where the kernel accounts BPF memory by cgroup.
timeout -s INT "$TRACE_S" bpftrace "$BENCH_DIR/shed_wait.bt" "$gate_pid" >"$TMP/sw/bt.txt" 2>"$TMP/sw/bt.err" || true
wait "$ol_pid" || die "openloop.py failed"
grep -q '^@total_us' "$TMP/sw/bt.txt" || { cat "$TMP/sw/bt.err" >&2; die "bpftrace gave no histogram"; }

python3 - "$TMP/sw/bt.txt" "$TMP/sw/ol.txt" "$OUT_DIR/shed_wait.md" <<PY
import json, re, sys
bt, olf, out = sys.argv[1:4]
hists, held, cur = {}, {}, None
for line in open(bt):
    s = line.strip()
    m = re.match(r"@(\w+):\s*$", s)
    if m:
        cur = hists.setdefault(m.group(1), [])
        continue
    m = re.match(r"@held_by\[(.*)\]: (\d+)", s)
    if m:
        held[m.group(1)] = int(m.group(2))
        continue
    m = re.match(r"\[(\d+)(K?), (\d+)(K?)\)\s+(\d+)", s) or re.match(r"\[(\d+)(K?), \.\.\.\)\s+(\d+)", s)
    if cur is not None and m:
        g = m.groups()
        lo = int(g[0]) * (1000 if g[1] == "K" else 1)
        cur.append((lo, int(g[-1])))
def pct(h, p):
    n = sum(c for _, c in h)
    k = 0
    for lo, c in h:
        k += c
        if k >= p / 100 * n:
            return lo
def share_over(h, us):
    n = sum(c for _, c in h)
    return 100.0 * sum(c for lo, c in h if lo >= us) / max(1, n)
res = json.loads(next(l for l in open(olf) if l.startswith("RESULT "))[7:])
n = sum(c for _, c in hists["total_us"])
rows = [("arrival → 503 written", "total_us"), ("of which the gate's thread was runnable, off every CPU", "off_cpu_us"), ("of which the gate was on a CPU", "on_cpu_us")]
held_ms = sorted(((k, v / 1e6) for k, v in held.items()), key=lambda x: -x[1])
total_wait = sum(v for _, v in held_ms)
with open(out, "w") as f:
    w = lambda s="": f.write(s + "\n")
    w("# Where a shed's time goes: the gate's side of a 503 at ${LOAD}× capacity")
    w()
    w("- machine: $META_MACHINE")
    w("- date: $META_DATE")
    w("- commit: $META_COMMIT")
    w("- command: \`$COMMAND\`")
    w(f"- load: benches/openloop.py ${OL_PRIO[*]:+under ${OL_PRIO[*]} }at {res['rate']} req/s (${LOAD}× capacity $cap req/s) for ${SEND_S} s against the gate (threads: 1, gzip level $GZIP_LEVEL, defaults: the adaptive limit on), GET /api/big with Accept-Encoding: gzip; one uvicorn worker on a Unix socket; bpftrace (benches/shed_wait.bt) on the gate for ${TRACE_S} s in the middle")
    w(f"- the generator's figures for the whole run: {res['shed']} sheds, p50 / p99 from send {res['shed_sent_p50_ms']} / {res['shed_sent_p99_ms']} ms (after the first second: p99 {res['steady_shed_sent_p99_ms']} ms); goodput {res['goodput_rps']} req/s; generator CPU {res['client_cpu_s']} s")
    w()
    w(f"Per 503 traced ({n}), in µs (50 µs buckets: a figure is its bucket's lower bound):")
    w()
    w("| part | p50 | p90 | p99 | share ≥ 1 ms |")
    w("| --- | --- | --- | --- | --- |")
    for label, key in rows:
        h = hists.get(key, [])
        w(f"| {label} | {pct(h, 50)} | {pct(h, 90)} | {pct(h, 99)} | {share_over(h, 1000):.1f}% |")
    w()
    w(f"While the gate's thread was runnable but off the CPU ({total_wait:.0f} ms in the ${TRACE_S} s traced), the CPU was held by:")
    w()
    w("| task | ms | share |")
    w("| --- | --- | --- |")
    for k, v in held_ms[:6]:
        w(f"| {k} | {v:.0f} | {100 * v / max(1e-9, total_wait):.0f}% |")
print(open(out).read())
PY
log "wrote ${OUT_DIR#"$REPO"/}/shed_wait.md"
