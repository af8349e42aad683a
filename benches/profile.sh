#!/usr/bin/env bash
# Cost of the gate's hop on `hello` (GET /hello), against nginx's: instructions
# (and cycles, when the machine has the counters) per request, measured on the
# proxy process alone, the uvicorn worker behind it not counted. The stack's
# floor (benches/src/bin/hyper_floor.rs: hyper + hyper-util as the gate sets
# them up, no pipeline) is measured the same way, so the gate's count splits
# into the stack's and the pipeline's.
#
#   bash benches/profile.sh            # N=5000 requests, h2load --h1 -c 8
#
# With hardware counters (`perf stat -e instructions true` works): perf stat
# -e instructions,cycles on the running proxy during a bounded h2load run.
# Without them (as in most VMs): valgrind --tool=callgrind on the proxy, counters
# zeroed after a warm-up (callgrind_control -z) and dumped after the measured
# requests (callgrind_control -d), so start-up and shutdown are not counted;
# then the gate's top functions (callgrind_annotate). nginx runs under the same
# tool with master_process off (one process). Writes benches/results/profile.md.
#
# Env: N (5000), WARM (500), PCONNS (8), TOOL (auto | perf | callgrind),
#      GATE_BIN, OUT_DIR, GATE_PORT, NGINX_PORT, ADMIN_PORT, KEEP_TMP=1.
set -euo pipefail
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=benches/lib.sh
source "$BENCH_DIR/lib.sh"
# shellcheck source=benches/scenarios/common.sh
source "$BENCH_DIR/scenarios/common.sh"
cd "$REPO"

N="${N:-5000}"
WARM="${WARM:-500}"
PCONNS="${PCONNS:-8}"
TOOL="${TOOL:-auto}"
COMMAND="N=$N WARM=$WARM PCONNS=$PCONNS TOOL=$TOOL ${GATE_BIN_GIVEN:+GATE_BIN=$GATE_BIN_GIVEN }bash benches/profile.sh"

ensure_tools curl:curl h2load:nghttp2-client nginx:nginx-light
if [[ "$TOOL" == auto ]]; then
    if command -v perf >/dev/null && perf stat -x, -e instructions true 2>&1 >/dev/null | grep -q '^[0-9]'; then
        TOOL=perf
    else
        TOOL=callgrind
    fi
fi
[[ "$TOOL" == perf ]] && ensure_tools perf:linux-perf
[[ "$TOOL" == callgrind ]] && ensure_tools valgrind:valgrind
log "tool: $TOOL"
ensure_gate
bash scripts/setup-python.sh >&2
init_tmp
install_traps
machine_meta
mkdir -p "$OUT_DIR"
SOCK="$TMP/app.sock"
start_uvicorn_uds app "$SOCK"
UDS_PID="$REPLY"

# load PORT COUNT: a bounded number of requests, HTTP/1.1, PCONNS connections.
load() {
    timeout -k 5 600 h2load -t 1 --h1 -c "$PCONNS" -m 1 -n "$2" "http://127.0.0.1:$1/hello" >"$TMP/h2load-$1-$2.txt" 2>&1 \
        || { log "h2load failed:"; cat "$TMP/h2load-$1-$2.txt" >&2; exit 1; }
    local ok
    ok="$(sed -n 's/^status codes: \([0-9]*\) 2xx.*/\1/p' "$TMP/h2load-$1-$2.txt")"
    [[ "$ok" == "$2" ]] || { log "only ${ok:-0} of $2 requests got 2xx"; cat "$TMP/h2load-$1-$2.txt" >&2; exit 1; }
}

# Waits for a front that runs under valgrind (slow to start).
wait_slow() {
    local pid="$1" url="$2"
    for _ in $(seq 600); do
        kill -0 "$pid" 2>/dev/null || return 1
        curl -sf -o /dev/null "$url" 2>/dev/null && return 0
        sleep 0.2
    done
    return 1
}

# measure_front NAME PORT PID: instructions (and cycles) for N requests into
# INSTR / CYCLES; for callgrind, the dump file into DUMP.
measure_front() {
    local name="$1" port="$2" pid="$3"
    load "$port" "$WARM"
    INSTR="" CYCLES="" DUMP=""
    if [[ "$TOOL" == perf ]]; then
        perf stat -x, -e instructions,cycles -p "$pid" -o "$TMP/perf-$name.txt" &
        local ppid=$!
        sleep 0.5
        load "$port" "$N"
        kill -INT "$ppid"
        wait "$ppid" || true
        INSTR="$(awk -F, '$3=="instructions" || $3 ~ /^instructions/ {print $1}' "$TMP/perf-$name.txt" | head -n1)"
        CYCLES="$(awk -F, '$3 ~ /^cycles/ {print $1}' "$TMP/perf-$name.txt" | head -n1)"
    else
        callgrind_control -z "$pid" >/dev/null 2>&1
        load "$port" "$N"
        callgrind_control -d "$pid" >/dev/null 2>&1
        sleep 1
        # The first numbered dump holds exactly the requests since the zeroing.
        DUMP="$TMP/cg.$name.$pid.1"
        [[ -f "$DUMP" ]] || die "$name: callgrind_control -d wrote no $DUMP"
        INSTR="$(sed -n 's/^summary: *\([0-9]*\).*/\1/p; s/^totals: *\([0-9]*\).*/\1/p' "$DUMP" | head -n1)"
    fi
    [[ -n "$INSTR" ]] || die "$name: no instruction count"
    log "$name: $INSTR instructions for $N requests ($((INSTR / N)) per request)"
}

# vg NAME: the command prefix that runs a front under the tool, into VG.
vg() {
    VG=()
    [[ "$TOOL" == callgrind ]] &&
        VG=(valgrind --tool=callgrind --quiet --callgrind-out-file="$TMP/cg.$1.%p")
    return 0
}

# profile_front NAME PORT LOG CMD...: starts CMD under the tool, waits for
# GET /hello on PORT, measures it (INSTR, CYCLES, DUMP), stops it.
profile_front() {
    local name="$1" port="$2" logf="$3" pid
    shift 3
    vg "$name"
    start_bg "$logf" "${VG[@]}" "$@"
    pid="$REPLY"
    wait_slow "$pid" "http://127.0.0.1:$port/hello" || { show_log "$name failed to start" "$logf"; exit 1; }
    measure_front "$name" "$port" "$pid"
    kill_wait "$pid"
    forget_pid "$pid"
}

# --- gate ---
gate_yaml "$TMP/gate.yaml" "$GATE_PORT" "$ADMIN_PORT"
# nginx has access_log off: the gate runs without its access log too.
profile_front gate "$GATE_PORT" "$TMP/gate.log" "$GATE_BIN" --no-access-log -c "$TMP/gate.yaml"
GATE_INSTR="$INSTR" GATE_CYCLES="$CYCLES" GATE_DUMP="$DUMP"

# --- the stack's floor: hyper + hyper-util, no pipeline ---
ensure_floor
profile_front floor "$FLOOR_PORT" "$TMP/floor.log" "$FLOOR_BIN" proxy "127.0.0.1:$FLOOR_PORT" "$SOCK"
FLOOR_INSTR="$INSTR" FLOOR_CYCLES="$CYCLES"

# --- nginx: one process (no master), the same config as in run.sh ---
write_nginx_conf "$SOCK" "" "" "" "master_process off;"
dir="$REPLY"
profile_front nginx "$NGINX_PORT" "$dir/stdout.log" "$(nginx_bin_path)" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
NGINX_INSTR="$INSTR" NGINX_CYCLES="$CYCLES"

# --- report ---
top=""
if [[ "$TOOL" == callgrind ]]; then
    # After a zeroing, the frames open on the stack at that moment show their
    # inclusive cost as their own: leave out those (>= 50%) in the exclusive view.
    top="$(callgrind_annotate --inclusive=no --threshold=100 "$GATE_DUMP" 2>/dev/null |
        sed -n '/file:function/,$p' | grep -v '^-*$' |
        awk 'match($0, /\( *[0-9.]+%\)/) { p = substr($0, RSTART + 1, RLENGTH - 3) + 0; if (p >= 50) next } { print }' |
        head -n 31 || true)"
    top_incl="$(callgrind_annotate --inclusive=yes "$GATE_DUMP" 2>/dev/null | sed -n '/^Ir/,$p' | grep -v '^-*$' | head -n 32 || true)"
fi
per() { [[ -n "$1" ]] && awk -v a="$1" -v n="$N" 'BEGIN { printf "%.0f", a / n }' || echo "n/a"; }
ratio() { [[ -n "$1" && -n "$2" ]] && awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }' || echo "n/a"; }
{
    echo "# Cost of one proxied request (GET /hello): gate vs the bare stack vs nginx"
    echo
    echo "- machine: $META_MACHINE"
    echo "- date: $META_DATE"
    echo "- commit: $META_COMMIT"
    echo "- command: \`$COMMAND\`"
    echo "- tool: $TOOL$([[ "$TOOL" == callgrind ]] && echo " (valgrind $(valgrind --version | sed 's/valgrind-//'); this machine has no hardware counters for perf)")"
    echo "- load: h2load --h1 -c $PCONNS -n $N http://127.0.0.1:PORT/hello after $WARM warm-up requests; counted on the proxy process only (gate: threads: 1; hyper_floor: the same runtime and server builder, one worker connection per client connection; nginx: master_process off, 1 process, upstream keepalive 64); the same uvicorn worker on a Unix socket behind all three"
    [[ "$TOOL" == callgrind ]] && echo "- callgrind counts user-space instructions only: the kernel's share (syscalls, TCP and Unix-socket I/O) is not in these figures for either front"
    echo
    echo "| front | instructions/request | cycles/request |"
    echo "| --- | --- | --- |"
    echo "| gate | $(per "$GATE_INSTR") | $(per "$GATE_CYCLES") |"
    echo "| nginx | $(per "$NGINX_INSTR") | $(per "$NGINX_CYCLES") |"
    echo "| hyper (the stack's floor, no pipeline) | $(per "$FLOOR_INSTR") | $(per "$FLOOR_CYCLES") |"
    echo "| gate / nginx | $(ratio "$GATE_INSTR" "$NGINX_INSTR") | $(ratio "$GATE_CYCLES" "$NGINX_CYCLES") |"
    echo "| hyper / nginx | $(ratio "$FLOOR_INSTR" "$NGINX_INSTR") | $(ratio "$FLOOR_CYCLES" "$NGINX_CYCLES") |"
    echo "| gate / hyper (the pipeline's share) | $(ratio "$GATE_INSTR" "$FLOOR_INSTR") | $(ratio "$GATE_CYCLES" "$FLOOR_CYCLES") |"
    echo
    echo "Target (issue 8): the gate's cost per request at or below nginx's (ratio ≤ 1)."
    if [[ -n "$top" ]]; then
        echo
        echo "<details><summary>gate: top functions by own instructions (callgrind_annotate --inclusive=no)</summary>"
        echo
        echo '```'
        echo "$top"
        echo '```'
        echo
        echo "</details>"
        echo
        echo "<details><summary>gate: top functions, inclusive</summary>"
        echo
        echo '```'
        echo "$top_incl"
        echo '```'
        echo
        echo "</details>"
    fi
} >"$OUT_DIR/profile.md"
cat "$OUT_DIR/profile.md"
if [[ -n "$GATE_DUMP" ]]; then
    # For callgrind_annotate / kcachegrind; benches/results/tmp/ is not committed.
    mkdir -p "$OUT_DIR/tmp"
    cp "$GATE_DUMP" "$OUT_DIR/tmp/callgrind.gate.out"
    log "the gate's callgrind dump: ${OUT_DIR#"$REPO"/}/tmp/callgrind.gate.out"
fi
log "wrote ${OUT_DIR#"$REPO"/}/profile.md"
