#!/usr/bin/env bash
# Cost of the gate's hop against nginx's: instructions (and cycles, when the
# machine has the counters) per request, measured on the proxy process alone,
# the uvicorn worker behind it not counted. Two cases: `hello` (GET /hello,
# proxied) and `reject` (GET /api/hello with a JWT signed with another key:
# the gate verifies it and answers 401; nginx answers `return 401` without
# looking at it). The stack's floor (benches/src/bin/hyper_floor.rs: hyper +
# hyper-util as the gate sets them up, no pipeline) is measured the same way,
# so the gate's count splits into the stack's and the pipeline's.
#
#   bash benches/profile.sh            # N=5000 requests, h2load --h1 -c 8
#   CASES=hello bash benches/profile.sh
#
# With hardware counters (`perf stat -e instructions true` works): perf stat
# -e instructions,cycles on the running proxy during a bounded h2load run.
# Without them (as in most VMs): valgrind --tool=callgrind on the proxy, counters
# zeroed after a warm-up (callgrind_control -z) and dumped after the measured
# requests (callgrind_control -d), so start-up and shutdown are not counted;
# then the gate's top functions (callgrind_annotate). nginx runs under the same
# tool with master_process off (one process). Writes benches/results/profile.md.
#
# Env: CASES (hello reject), N (5000), WARM (500), PCONNS (8), TOOL (auto | perf | callgrind),
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
CASES="${CASES:-hello reject}"
COMMAND="CASES='$CASES' N=$N WARM=$WARM PCONNS=$PCONNS TOOL=$TOOL ${GATE_BIN_GIVEN:+GATE_BIN=$GATE_BIN_GIVEN }bash benches/profile.sh"

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

# load PORT COUNT: a bounded number of requests to $URL_PATH (with the
# headers in LOAD_H), HTTP/1.1, PCONNS connections; every answer must be
# $EXPECT (2xx or 4xx).
load() {
    local out="$TMP/h2load-$1-$2.txt"
    timeout -k 5 600 h2load -t 1 --h1 -c "$PCONNS" -m 1 -n "$2" "${LOAD_H[@]}" "http://127.0.0.1:$1$URL_PATH" >"$out" 2>&1 \
        || { log "h2load failed:"; cat "$out" >&2; exit 1; }
    local ok
    ok="$(awk -v want="$EXPECT" '/^status codes:/ { for (i = 3; i <= NF; i++) if ($(i+1) ~ "^" want) print $i }' "$out")"
    [[ "$ok" == "$2" ]] || { log "only ${ok:-0} of $2 requests got $EXPECT"; cat "$out" >&2; exit 1; }
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
# GET /healthz on PORT, measures it (INSTR, CYCLES, DUMP), stops it.
profile_front() {
    local name="$1" port="$2" logf="$3" pid
    shift 3
    vg "$name"
    start_bg "$logf" "${VG[@]}" "$@"
    pid="$REPLY"
    wait_slow "$pid" "http://127.0.0.1:$port/healthz" || { show_log "$name failed to start" "$logf"; exit 1; }
    measure_front "$name" "$port" "$pid"
    kill_wait "$pid"
    forget_pid "$pid"
}

# keep FRONT CASE: the last measurement (INSTR, CYCLES, DUMP) into
# FRONT_INSTR_CASE, FRONT_CYCLES_CASE, FRONT_DUMP_CASE.
keep() {
    printf -v "$1_INSTR_$2" %s "$INSTR"
    printf -v "$1_CYCLES_$2" %s "$CYCLES"
    printf -v "$1_DUMP_$2" %s "$DUMP"
}

# profile_case CASE: the three fronts on one case, each kept (GATE, FLOOR, NGINX).
profile_case() {
    local case="$1" floor_mode dir
    LOAD_H=()
    EXPECT=2xx URL_PATH=/hello
    if [[ "$case" == reject ]]; then
        EXPECT=4xx URL_PATH=/api/hello
        LOAD_H=(-H "Authorization: Bearer $BAD_JWT_TOKEN")
        gate_401_yaml "$TMP/gate-$case.yaml" "$GATE_PORT" "$ADMIN_PORT"
        floor_mode=(reject "127.0.0.1:$FLOOR_PORT")
        write_nginx_conf "$SOCK" "" "$NGINX_401_LOCATION" "" "master_process off;"
    else
        gate_yaml "$TMP/gate-$case.yaml" "$GATE_PORT" "$ADMIN_PORT"
        floor_mode=(proxy "127.0.0.1:$FLOOR_PORT" "$SOCK")
        write_nginx_conf "$SOCK" "" "" "" "master_process off;"
    fi
    dir="$REPLY"
    # nginx has access_log off: the gate runs without its access log too.
    profile_front "gate-$case" "$GATE_PORT" "$TMP/gate-$case.log" "$GATE_BIN" --no-access-log -c "$TMP/gate-$case.yaml"
    keep GATE "$case"
    profile_front "floor-$case" "$FLOOR_PORT" "$TMP/floor-$case.log" "$FLOOR_BIN" "${floor_mode[@]}"
    keep FLOOR "$case"
    # nginx: one process (no master), the same config as in run.sh.
    profile_front "nginx-$case" "$NGINX_PORT" "$dir/stdout.log" "$(nginx_bin_path)" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
    keep NGINX "$case"
}

ensure_floor
bench_jwts
for case in $CASES; do
    [[ "$case" == hello || "$case" == reject ]] || die "unknown case $case (hello, reject)"
    profile_case "$case"
done

# --- report ---
per() { [[ -n "$1" ]] && awk -v a="$1" -v n="$N" 'BEGIN { printf "%.0f", a / n }' || echo "n/a"; }
ratio() { [[ -n "$1" && -n "$2" ]] && awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }' || echo "n/a"; }
# top DUMP TITLE: the dump's top functions, own instructions then inclusive.
top() {
    # After a zeroing, the frames open on the stack at that moment show their
    # inclusive cost as their own: leave out those (>= 50%) in the exclusive view.
    local own incl
    own="$(callgrind_annotate --inclusive=no --threshold=100 "$1" 2>/dev/null |
        sed -n '/file:function/,$p' | grep -v '^-*$' |
        awk 'match($0, /\( *[0-9.]+%\)/) { p = substr($0, RSTART + 1, RLENGTH - 3) + 0; if (p >= 50) next } { print }' |
        head -n 31 || true)"
    incl="$(callgrind_annotate --inclusive=yes "$1" 2>/dev/null | sed -n '/^Ir/,$p' | grep -v '^-*$' | head -n 32 || true)"
    printf '<details><summary>%s: top functions by own instructions (callgrind_annotate --inclusive=no)</summary>\n\n```\n%s\n```\n\n</details>\n\n' "$2" "$own"
    printf '<details><summary>%s: top functions, inclusive</summary>\n\n```\n%s\n```\n\n</details>\n' "$2" "$incl"
}
# table CASE TITLE
table() {
    local g="GATE_INSTR_$1" n="NGINX_INSTR_$1" f="FLOOR_INSTR_$1"
    local gc="GATE_CYCLES_$1" nc="NGINX_CYCLES_$1" fc="FLOOR_CYCLES_$1"
    echo "### $2"
    echo
    echo "| front | instructions/request | cycles/request |"
    echo "| --- | --- | --- |"
    echo "| gate | $(per "${!g}") | $(per "${!gc}") |"
    echo "| nginx | $(per "${!n}") | $(per "${!nc}") |"
    echo "| hyper (the stack's floor, no pipeline) | $(per "${!f}") | $(per "${!fc}") |"
    echo "| gate / nginx | $(ratio "${!g}" "${!n}") | $(ratio "${!gc}" "${!nc}") |"
    echo "| hyper / nginx | $(ratio "${!f}" "${!n}") | $(ratio "${!fc}" "${!nc}") |"
    echo "| gate / hyper (the pipeline's share) | $(ratio "${!g}" "${!f}") | $(ratio "${!gc}" "${!fc}") |"
    echo
}
{
    echo "# Cost of one request: gate vs the bare stack vs nginx"
    echo
    echo "- machine: $META_MACHINE"
    echo "- date: $META_DATE"
    echo "- commit: $META_COMMIT"
    echo "- command: \`$COMMAND\`"
    echo "- tool: $TOOL$([[ "$TOOL" == callgrind ]] && echo " (valgrind $(valgrind --version | sed 's/valgrind-//'); this machine has no hardware counters for perf)")"
    echo "- load: h2load --h1 -c $PCONNS -n $N after $WARM warm-up requests; counted on the proxy process only (gate: threads: 1; hyper_floor: the same runtime and server builder; nginx: master_process off, 1 process, upstream keepalive 64); the same uvicorn worker on a Unix socket behind all three"
    [[ "$TOOL" == callgrind ]] && echo "- callgrind counts user-space instructions only: the kernel's share (syscalls, TCP and Unix-socket I/O) is not in these figures for either front; valgrind hides the CPU's SHA extensions, so SHA-256 (the JWT's HMAC, the token cache's digest) runs in software here and costs several times what it does natively"
    echo
    for case in $CASES; do
        case "$case" in
        hello) table hello "hello: GET /hello, proxied to the worker (hyper: one worker connection per client connection)" ;;
        reject) table reject "reject: GET /api/hello with an HS256 JWT signed with another key → 401 (the gate verifies it; nginx \`return 401\` and hyper answer without reading it)" ;;
        esac
    done
    echo "Target (issue 8): the gate's cost per request at or below nginx's (ratio ≤ 1)."
    if [[ "$TOOL" == callgrind ]]; then
        for case in $CASES; do
            d="GATE_DUMP_$case"
            echo
            top "${!d}" "gate, $case"
        done
    fi
} >"$OUT_DIR/profile.md"
cat "$OUT_DIR/profile.md"
if [[ "$TOOL" == callgrind ]]; then
    # For callgrind_annotate / kcachegrind; benches/results/tmp/ is not committed.
    mkdir -p "$OUT_DIR/tmp"
    for case in $CASES; do
        g="GATE_DUMP_$case" f="FLOOR_DUMP_$case"
        cp "${!g}" "$OUT_DIR/tmp/callgrind.gate-$case.out"
        cp "${!f}" "$OUT_DIR/tmp/callgrind.floor-$case.out"
    done
    log "callgrind dumps: ${OUT_DIR#"$REPO"/}/tmp/callgrind.{gate,floor}-{$(echo $CASES | tr ' ' ,)}.out"
fi
log "wrote ${OUT_DIR#"$REPO"/}/profile.md"
