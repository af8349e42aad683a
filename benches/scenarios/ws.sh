# shellcheck shell=bash disable=SC2034 # TITLE, LOAD_DESC, *_PID...: read by run.sh and common.sh
# ws: WebSocket echo (/ws/echo) through the gate, through nginx and straight to
# uvicorn, and through HAProxy (HTTP mode relays the Upgrade and then tunnels,
# `timeout tunnel 1h`). Cases (WS_CASES, "CONNSxMESSAGES"): 1 connection × 10k round trips,
# 200 × 50 and 1000 × 50, all connections open at once. The client is
# benches/ws_client.py (Python `websockets`, CPU-heavy itself: its CPU is the
# "client" column). Each run is bounded by its message count and a timeout.
scenario_ws() {
    TITLE="WebSocket echo: gate vs nginx vs HAProxy vs direct uvicorn"
    UNIT=messages
    local cases="${WS_CASES:-1x10000 200x50 1000x50}"
    LOAD_DESC="benches/ws_client.py --conns N --messages M --size $WS_SIZE (one Python asyncio process, permessage-deflate off), ws://127.0.0.1:PORT/ws/echo, loopback"
    DESC+=("messages/s = echo round trips per second of the echo phase, all connections open; RSS peak = the front while every connection is open (the client holds them 0.5 s after the last echo)")
    start_uvicorn_uds app "$SOCK"
    local uds="$REPLY"
    if want gate; then
        # Each relayed WebSocket holds an upstream connection: the pool must
        # allow more than the largest case.
        gate_yaml "$TMP/ws/gate.yaml" "$GATE_PORT" "$ADMIN_PORT" "" "" "{ max_idle: 64, max_connections: 4096, idle_timeout: 4s }"
        try_gate gate "$GATE_PORT" "$TMP/ws/gate.yaml" &&
            add_front gate ws "ws://127.0.0.1:$GATE_PORT/ws/echo" 2xx "$REPLY" "$uds" "asgi-gate (threads: 1), upstream pool max_connections 4096"
    fi
    if want nginx; then
        start_nginx "$SOCK" "" ""
        NGINX_PID="$REPLY"
        add_front nginx ws "ws://127.0.0.1:$NGINX_PORT/ws/echo" 2xx "$(nginx_pids)" "$uds" "nginx, 1 worker, worker_connections 8192, Upgrade/Connection passed"
    fi
    if want haproxy; then
        # http-no-delay: no merging of small writes, as HAProxy's docs advise
        # for interactive traffic such as WebSocket.
        start_haproxy "$SOCK" "    option http-no-delay" "    option http-no-delay"
        HAPROXY_PID="$REPLY"
        add_front haproxy ws "ws://127.0.0.1:$HAPROXY_PORT/ws/echo" 2xx "$(haproxy_pids)" "$uds" "$(haproxy_desc); the Upgrade relayed, then a tunnel (\`timeout tunnel 1h\`, \`option http-no-delay\`)"
    fi
    if want direct; then
        start_uvicorn_tcp app "$DIRECT_PORT"
        add_front direct ws "ws://127.0.0.1:$DIRECT_PORT/ws/echo" 2xx "" "$REPLY" "uvicorn on TCP (websockets implementation), no proxy"
    fi
    # One short warm-up per front (20 × 50), not one per case.
    local c front
    if [[ "$WARMUP" != 0 && "$WARMUP" != 0s ]]; then
        WS_CONNS=20 WS_MSGS=50
        for front in "${FRONTS_ORDER[@]}"; do run_one warmup "$front" warmup "$WARMUP"; done
    fi
    local WARMUP=0
    for c in $cases; do
        WS_CONNS="${c%x*}" WS_MSGS="${c#*x}"
        CASES+=("$c=$WS_CONNS connection(s) × $WS_MSGS echoes of $WS_SIZE bytes")
        measure "$c" "${FRONTS_ORDER[@]}"
        RATIOS+=("$c|gate|direct|rps|$([[ $WS_CONNS -ge 100 ]] && echo '>=|0.9' || echo '|')|gate / direct messages/s"
            "$c|gate|nginx|rps|>=|1|gate / nginx messages/s (ahead of the best peer)"
            "$c|gate|haproxy|rps|>=|1|gate / HAProxy messages/s")
        ((WS_CONNS >= 1000)) && RATIOS+=("$c|gate|nginx|rss_peak_mib|<=|1|gate / nginx RSS with every socket open"
            "$c|gate|haproxy|rss_peak_mib|<=|1|gate / HAProxy RSS with every socket open")
    done
    return 0
}
