# shellcheck shell=bash disable=SC2034 # TITLE, LOAD_DESC, *_PID...: read by run.sh and common.sh
# hello: GET /hello, a tiny JSON answer. gate, gate_off (the adaptive limit
# off: today's gate, for issue 17's "hello throughput >= 0.98x today's gate"),
# nginx and HAProxy before one uvicorn on a Unix socket; direct = a second
# uvicorn on TCP (the "free proxy" limit); hyper = the stack's floor (hyper +
# hyper-util, no pipeline) before the same socket, so the gate's cost splits
# into the stack's and the pipeline's.
scenario_hello() {
    TITLE="GET /hello: asgi-gate vs nginx vs HAProxy vs direct uvicorn"
    LOAD_DESC="wrk -t$WRK_THREADS -c$CONNS -d$DURATION --latency http://127.0.0.1:PORT/hello, loopback"
    DESC+=("one uvicorn worker (httptools, no access log) on a Unix socket behind gate, gate_off, nginx, HAProxy and hyper; a second one on TCP for direct")
    start_uvicorn_uds app "$SOCK"
    local uds="$REPLY"
    if want gate; then
        gate_yaml "$TMP/hello/gate.yaml" "$GATE_PORT" "$ADMIN_PORT"
        try_gate gate "$GATE_PORT" "$TMP/hello/gate.yaml" &&
            add_front gate wrk "http://127.0.0.1:$GATE_PORT/hello" 2xx "$REPLY" "$uds" "asgi-gate, threads: 1, pool to the socket"
    fi
    if want gate_off; then
        gate_off_yaml "$TMP/hello/gate_off.yaml"
        try_gate gate_off "$GATE2_PORT" "$TMP/hello/gate_off.yaml" &&
            add_front gate_off wrk "http://127.0.0.1:$GATE2_PORT/hello" 2xx "$REPLY" "$uds" "$GATE_OFF_DESC"
    fi
    if want nginx; then
        start_nginx "$SOCK" "" ""
        NGINX_PID="$REPLY"
        add_front nginx wrk "http://127.0.0.1:$NGINX_PORT/hello" 2xx "$(nginx_pids)" "$uds" "nginx, 1 worker, upstream keepalive 64, sending the worker the headers the gate sends (X-Forwarded-For/Proto/Host, X-Request-Id) and returning X-Request-Id"
    fi
    if want haproxy; then
        start_haproxy "$SOCK"
        HAPROXY_PID="$REPLY"
        add_front haproxy wrk "http://127.0.0.1:$HAPROXY_PORT/hello" 2xx "$(haproxy_pids)" "$uds" "$(haproxy_desc)"
    fi
    if want hyper; then
        start_floor proxy "$SOCK"
        add_front hyper wrk "http://127.0.0.1:$FLOOR_PORT/hello" 2xx "$REPLY" "$uds" "the stack's floor: hyper + hyper-util as the gate sets them up, no pipeline, one worker connection per client connection (benches/src/bin/hyper_floor.rs)"
    fi
    if want direct; then
        start_uvicorn_tcp app "$DIRECT_PORT"
        add_front direct wrk "http://127.0.0.1:$DIRECT_PORT/hello" 2xx "" "$REPLY" "uvicorn on TCP, no proxy"
    fi
    measure - "${FRONTS_ORDER[@]}"
    RATIOS+=("-|gate|direct|rps|>=|1.15|gate / direct req/s"
        "-|gate|nginx|rps|>=|1|gate / nginx req/s (ahead of the best peer)"
        "-|gate|haproxy|rps|>=|1|gate / HAProxy req/s (ahead of the best peer)"
        "-|gate|gate_off|rps|>=|0.98|gate / gate_off req/s (the adaptive limit costs hello <= 2%)|17"
        "-|haproxy|nginx|rps|||HAProxy / nginx req/s (context)"
        "-|nginx|direct|rps|||nginx / direct req/s (context)"
        "-|gate|nginx|front_us|<=|1|gate / nginx front CPU per request"
        "-|gate|haproxy|front_us|<=|1|gate / HAProxy front CPU per request"
        "-|hyper|nginx|front_us|||stack floor / nginx front CPU per request (context)"
        "-|gate|hyper|front_us|||gate / stack floor front CPU per request (the pipeline's share)")
}
