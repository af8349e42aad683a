# shellcheck shell=bash disable=SC2034 # TITLE, LOAD_DESC, *_PID...: read by run.sh and common.sh
# overload: GET /api/big (64 KiB JSON rendered by Python on every call: the
# worker's CPU is the bottleneck) with Accept-Encoding: gzip, gzip at the
# front as in offload (no JWT, so that nginx and HAProxy do the same work).
#
# 1. Capacity: a closed-loop wrk run (-c$CONNS) against gate_off (the static
#    pool, today's gate) when this build has the `concurrency` key, else
#    against gate; its median req/s is the worker's capacity C (OL_CAPACITY
#    gives C instead, to compare runs).
# 2. Open loop, benches/openloop.py: C × each of OL_LOADS (0.05 1 2 3) requests
#    per second at even intervals, whatever the front answers, against every
#    front: gate (defaults: the adaptive limit on), gate_off, nginx, HAProxy,
#    direct uvicorn (no compression). 0.05× is the unloaded reference.
#    Latencies run from the time each request was due (no coordinated
#    omission); goodput counts 2xx answers completed inside the window.
# Before each run the worker is left to finish what the last one queued (its
# CPU idle), so no run inherits another's backlog.
#
# The generator is not h2load --rps: an h2load client holds one HTTP/1.1
# request in flight and keeps due requests pending until it finishes, timing
# them from when they finally go out (the wait behind a slow answer is
# hidden), and a client whose connection is closed reconnects and sends at
# once, outside the rate (against the gate's per-IP connection cap that
# became a storm many times the target rate). Not oha either: it would
# need a cargo install of a large crate graph (and cmake for aws-lc) on a
# 2-core machine shared with compiles. openloop.py is plain asyncio with
# httptools from the test venv; it reports its own send lag, so a run where
# the generator fell behind shows it.
scenario_overload() {
    TITLE="Overload: open-loop load at 1×, 2× and 3× the worker's capacity (64 KiB JSON, gzip at the front)"
    local path="${OVERLOAD_PATH:-/api/big}" loads="${OL_LOADS:-0.05 1 2 3}"
    LOAD_DESC="capacity: wrk -t$WRK_THREADS -c$CONNS -d$DURATION -H 'Accept-Encoding: gzip' http://127.0.0.1:PORT$path; then per load: benches/openloop.py --rate C×LOAD --duration $(dur_s "$DURATION") --max-conns $OL_MAX_CONNS --grace $OL_GRACE -H 'Accept-Encoding: gzip', loopback"
    DESC+=("GET $path (the app renders its 64 KiB JSON on every call) with \`Accept-Encoding: gzip\`, no JWT; one uvicorn worker on a Unix socket behind gate, gate_off, nginx and HAProxy (each compressing), a second one on TCP for direct (no compression)"
        "open-loop generator: benches/openloop.py (asyncio + httptools, one process): requests due at even intervals, sent on an idle keep-alive connection or a new one (up to $OL_MAX_CONNS), else queued in the generator; latency from the time a request was due; $( ((${#OL_PRIO[@]})) && echo "run at real-time priority (${OL_PRIO[*]}), so that its own scheduling delays stay out of the latencies it measures" || echo "at normal priority (chrt not allowed here, or OL_RT=0): its own scheduling delays are in the latencies it measures")")
    set_headers "Accept-Encoding: gzip"
    start_uvicorn_uds app "$SOCK"
    local uds="$REPLY"
    overload_top
    local top="$REPLY"
    if want gate; then
        gate_yaml "$TMP/overload/gate.yaml" "$GATE_PORT" "$ADMIN_PORT" "$top"
        try_gate gate "$GATE_PORT" "$TMP/overload/gate.yaml" &&
            add_front gate openloop "http://127.0.0.1:$GATE_PORT$path" any "$REPLY" "$uds" "asgi-gate (threads: 1), gzip level $GZIP_LEVEL, per-IP connection cap raised, no \`concurrency\` key (the adaptive limit of issue 17 is on by default in builds that have it; its sheds are 503 \`service_unavailable\` with Retry-After)"
    fi
    if want gate_off; then
        gate_off_yaml "$TMP/overload/gate_off.yaml" "$top"
        try_gate gate_off "$GATE2_PORT" "$TMP/overload/gate_off.yaml" &&
            add_front gate_off openloop "http://127.0.0.1:$GATE2_PORT$path" any "$REPLY" "$uds" "$GATE_OFF_DESC; gzip as \`gate\`"
    fi
    if want nginx; then
        # /ol-static: a fixed answer from nginx itself, for the generator check.
        start_nginx "$SOCK" "    gzip on;
    gzip_comp_level $GZIP_LEVEL;
    gzip_min_length 1024;
    gzip_proxied any;
    gzip_types application/json;" "        location = /ol-static {
            default_type application/json;
            return 200 '{\"ok\":true}';
        }"
        NGINX_PID="$REPLY"
        add_front nginx openloop "http://127.0.0.1:$NGINX_PORT$path" any "$(nginx_pids)" "$uds" "nginx, 1 worker, gzip level $GZIP_LEVEL, upstream keepalive 64 (no cap on worker connections)"
    fi
    if want haproxy; then
        start_haproxy "$SOCK" "" "    compression algo gzip
    compression type application/json"
        HAPROXY_PID="$REPLY"
        add_front haproxy openloop "http://127.0.0.1:$HAPROXY_PORT$path" any "$(haproxy_pids)" "$uds" "$(haproxy_desc); gzip with $(haproxy_comp_lib)"
    fi
    if want direct; then
        start_uvicorn_tcp app "$DIRECT_PORT"
        add_front direct openloop "http://127.0.0.1:$DIRECT_PORT$path" any "" "$REPLY" "uvicorn on TCP, no proxy, no compression"
    fi
    ((${#FRONTS_ORDER[@]})) || { log "overload: no front"; return 0; }

    # --- 1. capacity
    local cap_front="" cap
    if [[ -n "${OL_CAPACITY:-}" ]]; then
        cap="$OL_CAPACITY"
        NOTES+=("capacity: $cap req/s, given by OL_CAPACITY (not measured in this run)")
        REPORT_ARGS+=(--capacity-rps "$cap" --main-cases capacity)
    else
        if [[ -n "${F_CLIENT[gate_off]:-}" ]]; then
            cap_front=gate_off
        elif [[ -n "${F_CLIENT[gate]:-}" ]]; then
            cap_front=gate
        else
            cap_front="${FRONTS_ORDER[0]}"
        fi
        [[ "$cap_front" != gate_off ]] && NOTES+=("capacity measured against \`$cap_front\` (no gate_off front in this run)")
        CASES+=("capacity=closed loop, wrk -c$CONNS against $cap_front: the worker's capacity")
        set_front_client "$cap_front" wrk 2xx
        measure capacity "$cap_front"
        set_front_client "$cap_front" openloop any
        cap="$(python3 - "$RAW" "$cap_front" <<'PY'
import statistics, sys
rps = []
for line in open(sys.argv[1]):
    c = line.rstrip("\n").split("\t")
    if len(c) >= 18 and c[1] == "capacity" and c[2] == sys.argv[2] and int(c[4]) > 0 \
            and c[8] == "0" and c[9] == "0":
        rps.append(int(c[4]) / float(c[5]))
print(f"{statistics.median(rps):.1f}" if rps else "")
PY
)"
        [[ -n "$cap" ]] || { NOTES+=("WARNING: no valid capacity run; the open-loop runs are skipped"); return 0; }
        REPORT_ARGS+=(--capacity "capacity|$cap_front" --main-cases capacity)
    fi
    log "overload: capacity $cap req/s"

    # --- the generator check: can openloop.py send the highest load, here,
    # against an answer that costs nothing (nginx's own /ol-static)?
    if want nginx; then
        local top_m
        top_m="$(tr ' ' '\n' <<<"$loads" | sort -g | tail -n1)"
        OL_RATE="$(python3 -c "print(round($cap * $top_m, 1))")"
        local chk
        chk="$(timeout -k 5 $(($(dur_s "$DURATION") + 60)) "${OL_PRIO[@]}" "$PYVENV/bin/python" "$BENCH_DIR/openloop.py" \
            --port "$NGINX_PORT" --path /ol-static --rate "$OL_RATE" --duration "$(dur_s "$DURATION")" \
            --max-conns "$OL_MAX_CONNS" --grace "$OL_GRACE" | grep -m1 '^RESULT ' | cut -c8- || true)"
        if [[ -n "$chk" ]]; then
            NOTES+=("generator check: openloop.py at ${top_m}× capacity = $OL_RATE req/s against nginx's own fixed answer (no worker): $(ol_check_line "$chk")")
        else
            NOTES+=("generator check: openloop.py gave no result against nginx's /ol-static")
        fi
    fi

    # --- 2. open loop, the lowest load first (it warms every front up)
    local m c first=1
    RUN_HOOK=overload_settle
    for m in $loads; do
        c="${m}x"
        OL_RATE="$(python3 -c "print(round($cap * $m, 1))")"
        CASES+=("$c=open loop at $m × capacity = $OL_RATE req/s")
        REPORT_ARGS+=(--ol-case "$c=$m")
        if ((first)); then
            measure "$c" "${FRONTS_ORDER[@]}"
            first=0
        else
            WARMUP=0 measure "$c" "${FRONTS_ORDER[@]}"
        fi
    done
    RUN_HOOK=""
    REPORT_ARGS+=(--openloop "$TMP/$SCENARIO.openloop" --ol-front gate --ol-tag 17)
}

# overload_settle pre|post FRONT CASE REP: before a run, wait (up to 30 s)
# until the worker behind FRONT is idle: no CPU tick in 0.3 s.
overload_settle() {
    [[ "$1" == pre ]] || return 0
    local -a wp
    read -r -a wp <<<"${F_WORKER[$2]}"
    local i t0 t1
    for ((i = 0; i < 100; i++)); do
        cpu_ticks "${wp[@]}"; t0="$REPLY"
        sleep 0.3
        cpu_ticks "${wp[@]}"; t1="$REPLY"
        ((t1 == t0)) && return 0
    done
    log "overload: the worker behind $2 was still busy after 30 s"
}

# ol_check_line JSON: one line from an openloop.py result.
ol_check_line() {
    python3 - "$1" <<'PY'
import json, sys
d = json.loads(sys.argv[1])
print("{:.0f} req/s dispatched, lag p50/p99 {}/{} ms, answers p99 {} ms from send, {} queued for a connection,"
      " {}/{} answered, generator CPU {:.2f} cores".format(
          d["due"] / d["send_s"], d["lag_p50_ms"], d["lag_p99_ms"], d["ok_sent_p99_ms"], d["queued"],
          d["ok"], d["due"], d["client_cpu_s"] / d["wall_s"]))
PY
}
