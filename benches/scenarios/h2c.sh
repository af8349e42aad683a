# shellcheck shell=bash disable=SC2034 # TITLE, LOAD_DESC, *_PID...: read by run.sh and common.sh
# h2c: GET /hello with h2load. The gate serves HTTP/1.1 and h2c (prior
# knowledge) on one port; direct uvicorn speaks HTTP/1.1 only. nginx has no h2c
# by default: a plain listener speaks HTTP/1.1, and h2c needs `listen ... http2`
# on a separate port, where it then speaks prior-knowledge h2c only (no h1,
# no Upgrade). Both are measured here. HAProxy's clear-text bind speaks both on
# one port, as the gate's does (it switches to h2 on the client's preface).
scenario_h2c() {
    TITLE="h2c vs HTTP/1.1 (h2load): gate vs nginx vs HAProxy"
    LOAD_DESC="h2load -t1 -D ${DURATION%s}: h2c -c$H2_CONNS -m$H2_STREAMS, h1 --h1 -c$CONNS; http://127.0.0.1:PORT/hello, loopback"
    DESC+=("same client (h2load) for every front; h2c runs $H2_CONNS connections × $H2_STREAMS streams = $((H2_CONNS * H2_STREAMS)) in flight, h1 runs $CONNS connections"
        "nginx without TLS has no h2c by default (its plain listener is HTTP/1.1 only); nginx_h2c is a second listener with \`listen ... http2\` (prior knowledge only)")
    start_uvicorn_uds app "$SOCK"
    local uds="$REPLY"
    if want gate; then
        gate_yaml "$TMP/h2c/gate.yaml" "$GATE_PORT" "$ADMIN_PORT"
        if try_gate gate "$GATE_PORT" "$TMP/h2c/gate.yaml"; then
            add_front gate_h2c h2c "http://127.0.0.1:$GATE_PORT/hello" 2xx "$REPLY" "$uds" "asgi-gate (threads: 1), h2c prior knowledge"
            add_front gate_h1 h1 "http://127.0.0.1:$GATE_PORT/hello" 2xx "$REPLY" "$uds" "asgi-gate (threads: 1), HTTP/1.1, same port"
        fi
    fi
    if want nginx; then
        start_nginx "$SOCK" "" "" "        listen 127.0.0.1:$NGINX_H2_PORT http2;"
        NGINX_PID="$REPLY"
        add_front nginx_h2c h2c "http://127.0.0.1:$NGINX_H2_PORT/hello" 2xx "$(nginx_pids)" "$uds" "nginx, 1 worker, \`listen ... http2\` without TLS (prior knowledge)"
        add_front nginx_h1 h1 "http://127.0.0.1:$NGINX_PORT/hello" 2xx "$(nginx_pids)" "$uds" "nginx, 1 worker, HTTP/1.1"
    fi
    if want haproxy; then
        start_haproxy "$SOCK"
        HAPROXY_PID="$REPLY"
        add_front haproxy_h2c h2c "http://127.0.0.1:$HAPROXY_PORT/hello" 2xx "$(haproxy_pids)" "$uds" "$(haproxy_desc); h2c prior knowledge on its plain bind"
        add_front haproxy_h1 h1 "http://127.0.0.1:$HAPROXY_PORT/hello" 2xx "$(haproxy_pids)" "$uds" "HAProxy, HTTP/1.1, same port"
    fi
    if want direct; then
        start_uvicorn_tcp app "$DIRECT_PORT"
        add_front direct_h1 h1 "http://127.0.0.1:$DIRECT_PORT/hello" 2xx "" "$REPLY" "uvicorn on TCP, HTTP/1.1 only"
    fi
    measure - "${FRONTS_ORDER[@]}"
    RATIOS+=("-|gate_h2c|nginx_h2c|rps|>=|1|gate h2c / nginx h2c req/s"
        "-|gate_h1|nginx_h1|rps|>=|1|gate h1 / nginx h1 req/s"
        "-|gate_h2c|haproxy_h2c|rps|>=|1|gate h2c / HAProxy h2c req/s"
        "-|gate_h1|haproxy_h1|rps|>=|1|gate h1 / HAProxy h1 req/s"
        "-|gate_h2c|gate_h1|rps|||gate h2c / gate h1 req/s (context)"
        "-|gate_h1|direct_h1|rps|||gate h1 / direct h1 req/s (context)")
}
