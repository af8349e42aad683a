# shellcheck shell=bash disable=SC2034 # TITLE, LOAD_DESC, *_PID...: read by run.sh and common.sh
# cache_hit: GET of a cached 64 KiB JSON (/cacheable/big: the app's /big bytes
# with `Cache-Control: public, max-age=3600`), no Accept-Encoding. gate (a
# route with `cache: true`), nginx (proxy_cache) and Varnish (one thread pool)
# answer from their cache after one priming request; direct uvicorn renders it
# every time (the worker's own cost, for scale).
scenario_cache_hit() {
    TITLE="GET of a cached 64 KiB JSON: asgi-gate vs nginx proxy_cache vs Varnish vs direct uvicorn"
    local path=/cacheable/big
    LOAD_DESC="wrk -t$WRK_THREADS -c$CONNS -d$DURATION --latency http://127.0.0.1:PORT$path, loopback"
    DESC+=("every front gets GET $path (64 KiB JSON, \`Cache-Control: public, max-age=3600\`), primed by one request before the load: the worker sees only that one")
    start_uvicorn_uds app "$SOCK"
    local uds="$REPLY"
    if want gate; then
        gate_yaml "$TMP/cache_hit/gate.yaml" "$GATE_PORT" "$ADMIN_PORT" "cache:
  max_size: 256MiB" "  - path: /cacheable/{*rest}
    upstream: app
    cache: true
  - path: /{*rest}
    upstream: app"
        if try_gate gate "$GATE_PORT" "$TMP/cache_hit/gate.yaml"; then
            add_front gate wrk "http://127.0.0.1:$GATE_PORT$path" 2xx "$REPLY" "$uds" "asgi-gate, threads: 1, \`cache: true\` on /cacheable/ (max_size 256 MiB)"
            curl -s -o /dev/null "http://127.0.0.1:$GATE_PORT$path" || true
            expect_answer gate "http://127.0.0.1:$GATE_PORT$path" 200 "x-cache: HIT" || true
        fi
    fi
    if want nginx; then
        start_nginx "$SOCK" "$(nginx_cache_http)" "$(nginx_cache_location off)"
        NGINX_PID="$REPLY"
        add_front nginx wrk "http://127.0.0.1:$NGINX_PORT$path" 2xx "$(nginx_pids)" "$uds" "nginx, 1 worker, proxy_cache (256 MiB, files in the page cache)"
        curl -s -o /dev/null "http://127.0.0.1:$NGINX_PORT$path" || true
        expect_answer nginx "http://127.0.0.1:$NGINX_PORT$path" 200 "x-cache: HIT" || true
    fi
    if want varnish; then
        start_varnish "$SOCK"
        VARNISH_PID="$REPLY"
        add_front varnish wrk "http://127.0.0.1:$VARNISH_PORT$path" 2xx "$(varnish_pids)" "$uds" "$(varnish_version), one thread pool, malloc 256 MiB, built-in VCL"
        curl -s -o /dev/null "http://127.0.0.1:$VARNISH_PORT$path" || true
        expect_answer varnish "http://127.0.0.1:$VARNISH_PORT$path" 200 "x-cache: HIT" || true
    fi
    if want direct; then
        start_uvicorn_tcp app "$DIRECT_PORT"
        add_front direct wrk "http://127.0.0.1:$DIRECT_PORT$path" 2xx "" "$REPLY" "uvicorn on TCP, no cache: the worker renders every request"
    fi
    measure - "${FRONTS_ORDER[@]}"
    RATIOS+=("-|gate|nginx|rps|>=|1|gate / nginx req/s"
        "-|gate|varnish|rps|>=|1|gate / Varnish req/s"
        "-|gate|nginx|front_us|<=|1|gate / nginx front CPU per request"
        "-|gate|varnish|front_us|<=|1|gate / Varnish front CPU per request"
        "-|gate|direct|rps|||gate / direct uvicorn req/s (context)")
}
