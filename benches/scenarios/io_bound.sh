# shellcheck shell=bash disable=SC2034 # TITLE, LOAD_DESC, *_PID...: read by run.sh and common.sh
# io_bound: GET /slow?ms=20, a handler that awaits 20 ms (as a database call
# would) and burns almost no CPU, under CONNS (64) closed-loop clients. An
# adaptive limit must not throttle it: the worker should still hold about as
# many requests at once as there are clients, and the gate (default config:
# the limit on) must keep >= 0.95x the req/s of gate_off (the same gate with
# `concurrency: off`, issue 17 item 2). nginx, HAProxy and direct uvicorn for
# context. The app counts its own requests in flight on /slow; the most it saw
# during each run is noted.
scenario_io_bound() {
    TITLE="I/O-bound handler (awaits ${IO_MS:-20} ms): gate with its adaptive limit vs the limit off"
    local ms="${IO_MS:-20}" path
    path="/slow?ms=$ms"
    LOAD_DESC="wrk -t$WRK_THREADS -c$CONNS -d$DURATION --latency http://127.0.0.1:PORT$path, loopback"
    DESC+=("GET $path: an async handler that awaits $ms ms and returns a small JSON; one uvicorn worker on a Unix socket behind gate, gate_off, nginx and HAProxy; a second one on TCP for direct"
        "the ceiling with $CONNS clients is $CONNS / $ms ms = $((CONNS * 1000 / ms)) req/s, less the worker's CPU per request"
        "in-flight max: the most /slow requests the worker held at once during the run (the app's own count, GET /concurrency, reset before each run)")
    start_uvicorn_uds app "$SOCK"
    local uds="$REPLY"
    if want gate; then
        gate_yaml "$TMP/io_bound/gate.yaml" "$GATE_PORT" "$ADMIN_PORT"
        try_gate gate "$GATE_PORT" "$TMP/io_bound/gate.yaml" &&
            add_front gate wrk "http://127.0.0.1:$GATE_PORT$path" 2xx "$REPLY" "$uds" "asgi-gate (threads: 1), no \`concurrency\` key (the adaptive limit of issue 17 is on by default in builds that have it)"
    fi
    if want gate_off; then
        gate_off_yaml "$TMP/io_bound/gate_off.yaml"
        try_gate gate_off "$GATE2_PORT" "$TMP/io_bound/gate_off.yaml" &&
            add_front gate_off wrk "http://127.0.0.1:$GATE2_PORT$path" 2xx "$REPLY" "$uds" "$GATE_OFF_DESC"
    fi
    if want nginx; then
        start_nginx "$SOCK" "" ""
        NGINX_PID="$REPLY"
        add_front nginx wrk "http://127.0.0.1:$NGINX_PORT$path" 2xx "$(nginx_pids)" "$uds" "nginx, 1 worker, upstream keepalive 64"
    fi
    if want haproxy; then
        start_haproxy "$SOCK"
        HAPROXY_PID="$REPLY"
        add_front haproxy wrk "http://127.0.0.1:$HAPROXY_PORT$path" 2xx "$(haproxy_pids)" "$uds" "$(haproxy_desc)"
    fi
    if want direct; then
        start_uvicorn_tcp app "$DIRECT_PORT"
        add_front direct wrk "http://127.0.0.1:$DIRECT_PORT$path" 2xx "" "$REPLY" "uvicorn on TCP, no proxy"
    fi
    declare -gA IO_INFLIGHT=()
    RUN_HOOK=io_bound_hook
    measure - "${FRONTS_ORDER[@]}"
    RUN_HOOK=""
    local f line=""
    for f in "${FRONTS_ORDER[@]}"; do
        line+="${line:+; }$f ${IO_INFLIGHT[$f]:-?}"
    done
    NOTES+=("worker in-flight max per run (of $CONNS clients), in run order per front: $line")
    RATIOS+=("-|gate|gate_off|rps|>=|0.95|gate / gate_off req/s (an I/O-bound endpoint is not throttled)|17"
        "-|gate|gate_off|p99_ms|||gate / gate_off p99 (context)"
        "-|gate|direct|rps|||gate / direct req/s (context)"
        "-|gate|nginx|rps|||gate / nginx req/s (context)"
        "-|gate|haproxy|rps|||gate / HAProxy req/s (context)")
}

# io_bound_hook pre|post FRONT CASE REP: reset the worker's in-flight maximum
# before a run, read it after (the worker behind FRONT: the socket one, or the
# TCP one for direct).
io_bound_hook() {
    local phase="$1" front="$2" rep="$4" out base=http://localhost
    local -a copt=(--unix-socket "$SOCK")
    [[ "$front" == direct ]] && { base="http://127.0.0.1:$DIRECT_PORT"; copt=(); }
    if [[ "$phase" == pre ]]; then
        curl -s -o /dev/null -X POST "${copt[@]}" "$base/concurrency/reset" || true
        return 0
    fi
    out="$(curl -s "${copt[@]}" "$base/concurrency" || true)"
    out="$(sed -n 's/.*"max":\([0-9]*\).*/\1/p' <<<"$out")"
    [[ "$rep" == warmup ]] && return 0
    IO_INFLIGHT[$front]+="${IO_INFLIGHT[$front]:+, }${out:-?}"
}
