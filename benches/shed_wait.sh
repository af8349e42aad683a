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
# the overload target is judged on) from the same run. Two layouts:
#   - shared: the kernel places the three processes (as every bench runs);
#   - pinned: the gate alone on CPU 0, worker and generator on CPU 1, the
#     control in which the gate never waits behind the generator.
#
#   bash benches/shed_wait.sh                  # capacity measured (wrk, gate_off)
#   OL_CAPACITY=1387 LOAD=3 bash benches/shed_wait.sh
#
# Needs root (bpftrace; Debian's package is installed when missing). Env:
# OL_CAPACITY, LOAD (3), SEND_S (10 s of sending), TRACE_S (5 s traced in
# the middle of each run), REPS (3 per layout), LAYOUTS ("shared pinned"),
# GATE_BIN, OUT_DIR, OL_RT (1: generator at chrt -f 10, as the
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
REPS="${REPS:-3}"
LAYOUTS="${LAYOUTS:-shared pinned}"
COMMAND="${OL_CAPACITY:+OL_CAPACITY=$OL_CAPACITY }LAYOUTS='$LAYOUTS' REPS=$REPS LOAD=$LOAD SEND_S=$SEND_S TRACE_S=$TRACE_S ${GATE_BIN_GIVEN:+GATE_BIN=$GATE_BIN_GIVEN }bash benches/shed_wait.sh"
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
uv_pid="$REPLY"
overload_top
top="$REPLY"

cap="${OL_CAPACITY:-}"
cap_how="given by OL_CAPACITY"
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
    cap_how="wrk -t1 -c64 -d7s against gate_off, the same gate with \`concurrency: off\`"
    log "capacity ($cap_how): $cap req/s"
fi
rate="$(python3 -c "print(round($cap * $LOAD, 1))")"

gate_yaml "$TMP/sw/gate.yaml" "$GATE_PORT" "$ADMIN_PORT" "$top"
start_gate gate "$GATE_PORT" "$TMP/sw/gate.yaml"
gate_pid="$REPLY"
GEN_PIN=()
ol() {
    timeout -k 5 $(($1 + ${OL_GRACE%.*} + 60)) "${GEN_PIN[@]}" "${OL_PRIO[@]}" "$PYVENV/bin/python" "$BENCH_DIR/openloop.py" \
        --port "$GATE_PORT" --path /api/big --rate "$2" --duration "$1" --max-conns "$OL_MAX_CONNS" \
        --grace "$OL_GRACE" -H 'Accept-Encoding: gzip'
}
all_cpus="0-$(($(nproc) - 1))"
for layout in $LAYOUTS; do
    case "$layout" in
    shared)
        taskset -a -p -c "$all_cpus" "$gate_pid" >/dev/null
        taskset -a -p -c "$all_cpus" "$uv_pid" >/dev/null
        GEN_PIN=()
        ;;
    pinned)
        (($(nproc) >= 2)) || die "the pinned layout needs 2 CPUs"
        taskset -a -p -c 0 "$gate_pid" >/dev/null
        taskset -a -p -c 1 "$uv_pid" >/dev/null
        GEN_PIN=(taskset -c 1)
        ;;
    *) die "unknown layout '$layout' (have: shared pinned)" ;;
    esac
    for rep in $(seq "$REPS"); do
        # Warm-up at capacity: the limit learns the worker before the measured run.
        ol 3 "$cap" >/dev/null
        sleep 1
        ol "$SEND_S" "$rate" >"$TMP/sw/ol.$layout.$rep.txt" &
        ol_pid=$!
        sleep "$(python3 -c "print(max(1.0, ($SEND_S - $TRACE_S) / 2))")"
        timeout -s INT "$TRACE_S" bpftrace "$BENCH_DIR/shed_wait.bt" "$gate_pid" \
            >"$TMP/sw/bt.$layout.$rep.txt" 2>"$TMP/sw/bt.err" || true
        wait "$ol_pid" || die "openloop.py failed"
        grep -q '^@total_us' "$TMP/sw/bt.$layout.$rep.txt" || { cat "$TMP/sw/bt.err" >&2; die "bpftrace gave no histogram"; }
        log "$layout: run $rep of $REPS done"
        sleep 2
    done
done

python3 - "$TMP/sw" "$REPS" "$OUT_DIR/shed_wait.md" $LAYOUTS <<PY
import json, re, sys
d, reps, out, layouts = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]

def parse(bt):
    hists, held, cur = {}, {}, None
    for line in open(bt):
        s = line.strip()
        m = re.match(r"@(\w+):\s*$", s)
        if m:
            cur = hists.setdefault(m.group(1), {})
            continue
        m = re.match(r"@held_by\[(.*)\]: (\d+)", s)
        if m:
            held[m.group(1)] = int(m.group(2))
            continue
        m = re.match(r"\[(\d+)(K?), (\d+)(K?)\)\s+(\d+)", s) or re.match(r"\[(\d+)(K?), \.\.\.\)\s+(\d+)", s)
        if cur is not None and m:
            g = m.groups()
            lo = int(g[0]) * (1000 if g[1] == "K" else 1)
            cur[lo] = cur.get(lo, 0) + int(g[-1])
    return hists, held

def pct(h, p):
    n = sum(h.values())
    k = 0
    for lo in sorted(h):
        k += h[lo]
        if k >= p / 100 * n:
            return lo

def over(h, us):
    return 100.0 * sum(c for lo, c in h.items() if lo >= us) / max(1, sum(h.values()))

KEYS = [("total_us", "arrival → 503 written"),
        ("off_cpu_us", "the gate's thread runnable, off every CPU"),
        ("on_cpu_us", "the gate on a CPU")]
LAYOUT = {
    "shared": "shared: the kernel places the gate, the worker and the generator on the two CPUs as it likes (as every bench here runs)",
    "pinned": "pinned: the gate alone on CPU 0, the worker and the generator on CPU 1 (the control: the gate's thread never waits behind the generator; the worker then loses CPU to the generator, so goodput here is not comparable)",
}
runs, all_h, all_held = {}, {}, {}
for lay in layouts:
    runs[lay], all_h[lay], all_held[lay] = [], {k: {} for k, _ in KEYS}, {}
    for r in range(1, reps + 1):
        h, held = parse(f"{d}/bt.{lay}.{r}.txt")
        res = json.loads(next(l for l in open(f"{d}/ol.{lay}.{r}.txt") if l.startswith("RESULT "))[7:])
        runs[lay].append((h, held, res))
        for k, _ in KEYS:
            for lo, c in h.get(k, {}).items():
                all_h[lay][k][lo] = all_h[lay][k].get(lo, 0) + c
        for t, ns in held.items():
            all_held[lay][t] = all_held[lay].get(t, 0) + ns

with open(out, "w") as f:
    w = lambda s="": f.write(s + "\n")
    w("# Where a shed's time goes: the gate's side of a 503 at ${LOAD}× capacity")
    w()
    w("- machine: $META_MACHINE")
    w("- date: $META_DATE")
    w("- commit: $META_COMMIT")
    w("- command: \`$COMMAND\`")
    w(f"- load: per layout, ${REPS} runs of benches/openloop.py ${OL_PRIO[*]:+under ${OL_PRIO[*]} }at {runs[layouts[0]][0][2]['rate']} req/s (${LOAD}× capacity, $cap req/s: $cap_how) for ${SEND_S} s against the gate (threads: 1, gzip level $GZIP_LEVEL, defaults: the adaptive limit on), GET /api/big with Accept-Encoding: gzip, each after 3 s at capacity; one uvicorn worker on a Unix socket; bpftrace (benches/shed_wait.bt) on the gate for ${TRACE_S} s in the middle of each run")
    for lay in layouts:
        w(f"- layout {LAYOUT[lay]}")
    w("- per 503 the gate wrote: from its request reaching the gate's socket to the 503 leaving it, in µs, split into the time the gate's thread was runnable but off every CPU and the time it ran; 50 µs buckets, a figure is its bucket's lower bound")
    w()
    w("| layout | run | 503s traced | arrival → 503 p50 / p99 µs | ≥ 1 ms | off CPU p99 µs | on CPU p99 µs | gate runnable, off CPU, ms per s | the generator's shed p99 from send after the first 1 s, ms | goodput req/s |")
    w("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for lay in layouts:
        for i, (h, held, res) in enumerate(runs[lay], 1):
            t = h.get("total_us", {})
            w(f"| {lay} | {i} | {sum(t.values())} | {pct(t, 50)} / {pct(t, 99)} | {over(t, 1000):.1f}% | {pct(h.get('off_cpu_us', {}), 99)} | {pct(h.get('on_cpu_us', {}), 99)} | {sum(held.values()) / 1e6 / ${TRACE_S}:.0f} | {res['steady_shed_sent_p99_ms']} | {res['goodput_rps']} |")
    w()
    w("All runs of a layout together:")
    w()
    w("| layout | part | p50 µs | p90 µs | p99 µs | share ≥ 1 ms |")
    w("| --- | --- | --- | --- | --- | --- |")
    for lay in layouts:
        for k, label in KEYS:
            h = all_h[lay][k]
            w(f"| {lay} | {label} | {pct(h, 50)} | {pct(h, 90)} | {pct(h, 99)} | {over(h, 1000):.1f}% |")
    w()
    w("While the gate's thread was runnable but off the CPU, the CPU was held by (the generator is the \`python\` process, the worker \`uvicorn\`):")
    w()
    w("| layout | task | share of that time |")
    w("| --- | --- | --- |")
    for lay in layouts:
        total = sum(all_held[lay].values()) or 1
        for t, ns in sorted(all_held[lay].items(), key=lambda x: -x[1])[:4]:
            w(f"| {lay} | {t} | {100 * ns / total:.0f}% |")
print(open(out).read())
PY
log "wrote ${OUT_DIR#"$REPO"/}/shed_wait.md"
