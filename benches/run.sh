#!/usr/bin/env bash
# The load benches: asgi-gate against direct uvicorn, nginx, HAProxy and the
# Python middleware stack, each before the same FastAPI app, on loopback.
#
#   bash benches/run.sh                       # every scenario (about 30 min)
#   bash benches/run.sh hello offload         # some of them
#   REPS=1 DURATION=3s WARMUP=0 bash benches/run.sh hello offload io_bound overload
#                                             # a quick plumbing check (~5 min)
#
# Scenarios: hello offload io_bound overload auth_small reject ws h2c
# static_range cache_hit coalescing (see
# benches/scenarios/*.sh and benches/README.md). Each starts its own processes
# (one uvicorn worker each), measures its fronts in alternation (order rotated
# every rep), stops everything it started by PID and writes
# benches/results/<scenario>.{csv,md} (overload also overload_openloop.csv); at
# the end benches/results/ratios.png charts every ratio of every scenario's CSV.
# Fronts: gate (the default config: the adaptive concurrency limit on),
# gate_off (GATE_OFF_UPSTREAM under the upstream: `concurrency: off`),
# gate_floor (offload: `concurrency: { min_work: 5ms }`, the limit with a floor), nginx,
# haproxy (Debian's, nbthread 1, http-reuse always), hyper (the stack's floor),
# stack (app_stack.py), direct (uvicorn on TCP). Closed-loop load: wrk, h2load
# (h2c), ws_client.py; open loop (overload): benches/openloop.py, not h2load
# --rps (coordinated omission, reconnect bursts) nor oha (a large cargo build).
#
# Env: REPS (3), DURATION (7s per run), CONNS (64), WRK_THREADS (1),
#      WARMUP (2s; 0 = none), FRONTS (limit the fronts, e.g. "gate gate_off"),
#      H2_CONNS (8), H2_STREAMS (8), WS_CASES ("1x10000 200x50 1000x50"),
#      WS_SIZE (64), GZIP_LEVEL (6), OFFLOAD_PATH (/api/big), IO_MS (20),
#      OVERLOAD_PATH (/api/big), OL_LOADS ("0.05 1 2 3" x capacity),
#      OL_CAPACITY (req/s, skips measuring it), OL_MAX_CONNS (1024), OL_GRACE
#      (3 s), COALESCE_N (1000), COALESCE_MS (500), GATE_OFF_UPSTREAM ("concurrency: off"), OUT_DIR
#      (benches/results), GATE_POOL (the gate's upstream pool as a YAML flow
#      map; default max_connections 256), GATE_BIN (default: build target/release/asgi-gate;
#      set it to skip the build), KEEP_TMP=1 (keep logs and configs),
#      ports: GATE_PORT 18080, NGINX_PORT 18081, DIRECT_PORT 18082,
#      STACK_PORT 18083, GATE2_PORT 18084, NGINX_H2_PORT 18085,
#      FLOOR_PORT 18086, HAPROXY_PORT 18087, VARNISH_PORT 18088, ADMIN_PORT 18901,
#      ADMIN2_PORT 18902.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The exact command: every setting given in the environment, before defaults.
cmd_env=""
for v in REPS DURATION CONNS WRK_THREADS WARMUP FRONTS H2_CONNS H2_STREAMS WS_CASES WS_SIZE GZIP_LEVEL OFFLOAD_PATH \
    IO_MS OVERLOAD_PATH OL_LOADS COALESCE_N COALESCE_MS OL_CAPACITY OL_MAX_CONNS OL_GRACE GATE_OFF_UPSTREAM GATE_BIN GATE_POOL OUT_DIR; do
    [[ -n "${!v:-}" ]] && cmd_env+="$v=\"${!v}\" "
done
# shellcheck source=benches/lib.sh
source "$BENCH_DIR/lib.sh"
cd "$REPO"

ALL_SCENARIOS=(hello offload io_bound overload auth_small reject ws h2c static_range cache_hit coalescing)
SCENARIOS=("$@")
((${#SCENARIOS[@]})) || SCENARIOS=("${ALL_SCENARIOS[@]}")
for s in "${SCENARIOS[@]}"; do
    [[ " ${ALL_SCENARIOS[*]} " == *" $s "* ]] || die "unknown scenario '$s' (have: ${ALL_SCENARIOS[*]})"
    # shellcheck source=/dev/null
    source "$BENCH_DIR/scenarios/$s.sh"
done
# shellcheck source=benches/scenarios/common.sh
source "$BENCH_DIR/scenarios/common.sh"

COMMAND="${BENCH_COMMAND:-${cmd_env}bash benches/run.sh $*}"
COMMAND="${COMMAND% }"

# --- tools ----------------------------------------------------------------------
tools=(wrk:wrk curl:curl nginx:nginx-light haproxy:haproxy)
[[ " ${SCENARIOS[*]} " == *" h2c "* ]] && tools+=(h2load:nghttp2-client)
[[ " ${SCENARIOS[*]} " == *" cache_hit "* || " ${SCENARIOS[*]} " == *" coalescing "* ]] && tools+=(varnishd:varnish)
ensure_tools "${tools[@]}"
ensure_gate
bash scripts/setup-python.sh >&2
CHART=1
ensure_bench_venv || { log "WARNING: no bench venv (matplotlib); the chart is skipped"; CHART=0; }
# 1k WebSockets and 64 connections through a proxy need more than 1024 fds.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

init_tmp
install_traps
write_wrk_lua
machine_meta
mkdir -p "$OUT_DIR"

# One secret for the gate (secret_env) and the stack; tokens minted with PyJWT.
bench_jwts

log "scenarios: ${SCENARIOS[*]}; $REPS reps of $DURATION per front (+ warm-up $WARMUP); results in $OUT_DIR"

run_scenario() {
    SCENARIO="$1"
    RAW="$TMP/$SCENARIO.raw"
    : >"$RAW"
    NOTES=() DESC=() RATIOS=() CASES=() REPORT_ARGS=() RUN_HOOK="" SELF_REPORT=""
    [[ -n "${GATE_NOTE:-}" ]] && NOTES+=("$GATE_NOTE")
    TITLE="$SCENARIO" UNIT=requests LOAD_DESC=""
    reset_fronts
    # shellcheck disable=SC2119 # no argument: no extra header
    set_headers
    mkdir -p "$TMP/$SCENARIO"
    SOCK="$TMP/$SCENARIO/app.sock"
    log "=== $SCENARIO"
    local t0=$SECONDS
    "scenario_$SCENARIO"
    stop_all
    if [[ -n "$SELF_REPORT" ]]; then
        log "=== $SCENARIO done in $((SECONDS - t0)) s: wrote ${OUT_DIR#"$REPO"/}/$SCENARIO.md and .csv"
        grep -E '^\| ' "$OUT_DIR/$SCENARIO.md" >&2 || true
        return 0
    fi
    local -a args=(--raw "$RAW" --scenario "$SCENARIO" --title "$TITLE" --out-dir "$OUT_DIR"
        --clk "$CLK_TCK" --unit "$UNIT"
        --meta "machine=$META_MACHINE" --meta "date=$META_DATE" --meta "commit=$META_COMMIT"
        --meta "command=$COMMAND" --meta "load=$LOAD_DESC")
    local x
    for x in "${DESC[@]}"; do args+=(--desc "$x"); done
    for x in "${NOTES[@]}"; do args+=(--note "$x"); done
    for x in "${CASES[@]}"; do args+=(--case "$x"); done
    for x in "${RATIOS[@]}"; do args+=(--ratio "$x"); done
    for x in "${FRONTS_ORDER[@]}"; do args+=(--front "$x=${F_DESC[$x]}"); done
    # Extra report.py flags a scenario asked for (--p999, the open-loop tables).
    args+=("${REPORT_ARGS[@]}")
    python3 "$BENCH_DIR/report.py" "${args[@]}" >"$TMP/$SCENARIO.report.txt"
    log "=== $SCENARIO done in $((SECONDS - t0)) s: wrote ${OUT_DIR#"$REPO"/}/$SCENARIO.md and .csv"
    local n
    for n in "${NOTES[@]}"; do log "    $n"; done
    sed '/^<details>/,$d' "$TMP/$SCENARIO.report.txt" | grep -E '^(\| |## )' >&2 || true
}

for s in "${SCENARIOS[@]}"; do run_scenario "$s"; done
if ((CHART)); then
    "$BENCH_DIR/.venv/bin/python" "$BENCH_DIR/chart.py" "$OUT_DIR" >&2 || log "WARNING: the chart failed"
fi
log "done in $SECONDS s; results in ${OUT_DIR#"$REPO"/}/ (README sections: bash benches/update-readme.sh)"
