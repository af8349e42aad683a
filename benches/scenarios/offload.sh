# shellcheck shell=bash disable=SC2034 # TITLE, LOAD_DESC, *_PID...: read by run.sh and common.sh
# offload: 64 KiB JSON, Accept-Encoding: gzip, a valid HS256 JWT, rate limit
# never hit. gate (auth + gzip 6 + per-IP limit) before the plain app vs the
# Python stack (app_stack.py: PyJWT + token bucket + GZipMiddleware level 9)
# reached directly vs direct uvicorn without any compression (the ceiling);
# nginx (gzip 6 only: nginx-light has no JWT) and HAProxy (gzip with Debian's
# libslz, no JWT check configured) as the peers; gate_off = the same gate with
# the adaptive concurrency limit off (today's gate, issue 17); gate_floor =
# the limit with a floor of 5 ms of work per worker (`min_work: 5ms`). p99
# and p99.9 per front (p99.9 from report.lua's done() hook).
scenario_offload() {
    TITLE="64 KiB JSON with gzip and a JWT: gate + plain app vs the Python middleware stack"
    start_uvicorn_uds app "$SOCK"
    local uds="$REPLY" path="${OFFLOAD_PATH:-/api/big}"
    local code
    code="$(curl -s -o /dev/null -w '%{http_code}' --unix-socket "$SOCK" "http://localhost$path")"
    if [[ "$code" != 200 ]]; then
        NOTES+=("WARNING: the app has no $path (answered $code); measured on /big instead. app_stack's JWT middleware covers /api/ only, so on /big the stack does NOT verify the token (it still rate-limits and gzips): the stack is favoured. Add GET /api/big (same bytes as /big) to integration-tests/app/app.py.")
        log "WARNING: no $path in the app; using /big (the stack skips its JWT check there)"
        path=/big
    fi
    LOAD_DESC="wrk -t$WRK_THREADS -c$CONNS -d$DURATION --latency -H 'Accept-Encoding: gzip' -H 'Authorization: Bearer <HS256 JWT>' http://127.0.0.1:PORT$path, loopback"
    DESC+=("every front gets the same request: GET $path (the app's 64 KiB JSON), \`Accept-Encoding: gzip\`, a valid HS256 JWT (exp a year ahead); rate limits far above the load")
    set_headers "Accept-Encoding: gzip" "Authorization: Bearer $JWT_TOKEN"
    local routes top
    if want gate || want gate_off || want gate_floor; then
        routes="  - path: /api/{*rest}
    upstream: app
    auth: default
    rate_limit: per_ip
  - path: /{*rest}
    upstream: app
    rate_limit: per_ip
  - path: /
    upstream: app"
        [[ "$path" == /big ]] && routes+="
  - path: /big
    upstream: app
    auth: default
    rate_limit: per_ip"
        top="auth:
  default:
    algorithms: [HS256]
    secret_env: JWT_SECRET
rate_limits:
  per_ip: { key: client_ip, rate: 1000000/s, burst: 1000000 }
compression:
  algorithms: [gzip]
  levels: { gzip: $GZIP_LEVEL }"
    fi
    if want gate; then
        gate_yaml "$TMP/offload/gate.yaml" "$GATE_PORT" "$ADMIN_PORT" "$top" "$routes"
        if try_gate gate "$GATE_PORT" "$TMP/offload/gate.yaml"; then
            add_front gate wrk "http://127.0.0.1:$GATE_PORT$path" 2xx "$REPLY" "$uds" "asgi-gate (threads: 1): JWT HS256 + per-IP limit + gzip level $GZIP_LEVEL, plain app.py behind; no \`concurrency\` key (the adaptive limit of issue 17 is on by default in builds that have it)"
            expect_answer gate "http://127.0.0.1:$GATE_PORT$path" 200 "content-encoding: gzip" -H "Accept-Encoding: gzip" -H "Authorization: Bearer $JWT_TOKEN" || true
            expect_answer "gate without a token" "http://127.0.0.1:$GATE_PORT$path" 401 "" || true
        fi
    fi
    if want gate_off; then
        gate_off_yaml "$TMP/offload/gate_off.yaml" "$top" "$routes"
        if try_gate gate_off "$GATE2_PORT" "$TMP/offload/gate_off.yaml"; then
            add_front gate_off wrk "http://127.0.0.1:$GATE2_PORT$path" 2xx "$REPLY" "$uds" "$GATE_OFF_DESC: JWT, per-IP limit and gzip as \`gate\`"
            expect_answer gate_off "http://127.0.0.1:$GATE2_PORT$path" 200 "content-encoding: gzip" -H "Accept-Encoding: gzip" -H "Authorization: Bearer $JWT_TOKEN" || true
        fi
    fi
    if want gate_floor; then
        gate_yaml "$TMP/offload/gate_floor.yaml" "$GATE3_PORT" "$ADMIN3_PORT" "$top" "$routes" "" "concurrency: { min_work: 5ms }"
        if try_gate gate_floor "$GATE3_PORT" "$TMP/offload/gate_floor.yaml"; then
            add_front gate_floor wrk "http://127.0.0.1:$GATE3_PORT$path" 2xx "$REPLY" "$uds" "the same gate with \`concurrency: { min_work: 5ms }\`: the adaptive limit with a floor of 5 ms of work per worker (off by default); JWT, per-IP limit and gzip as \`gate\`"
        fi
    fi
    if want stack; then
        RATE_LIMIT_RPS=1000000000 RATE_LIMIT_BURST=1000000000 start_uvicorn_tcp app_stack "$STACK_PORT"
        add_front stack wrk "http://127.0.0.1:$STACK_PORT$path" 2xx "" "$REPLY" "uvicorn running app_stack.py on TCP: token bucket per IP, PyJWT HS256 on /api/, GZipMiddleware (level 9, its default)"
        expect_answer stack "http://127.0.0.1:$STACK_PORT$path" 200 "content-encoding: gzip" -H "Accept-Encoding: gzip" -H "Authorization: Bearer $JWT_TOKEN" || true
        [[ "$path" == /api/* ]] && { expect_answer "stack without a token" "http://127.0.0.1:$STACK_PORT$path" 401 "" || true; }
    fi
    if want nginx; then
        start_nginx "$SOCK" "    gzip on;
    gzip_comp_level $GZIP_LEVEL;
    gzip_min_length 1024;
    gzip_proxied any;
    gzip_types application/json;" ""
        NGINX_PID="$REPLY"
        add_front nginx wrk "http://127.0.0.1:$NGINX_PORT$path" 2xx "$(nginx_pids)" "$uds" "nginx, 1 worker, gzip level $GZIP_LEVEL, NO JWT check (nginx-light has none): a lower bound of a peer's cost"
        expect_answer nginx "http://127.0.0.1:$NGINX_PORT$path" 200 "content-encoding: gzip" -H "Accept-Encoding: gzip" || true
    fi
    if want haproxy; then
        start_haproxy "$SOCK" "" "    compression algo gzip
    compression type application/json"
        HAPROXY_PID="$REPLY"
        add_front haproxy wrk "http://127.0.0.1:$HAPROXY_PORT$path" 2xx "$(haproxy_pids)" "$uds" "$(haproxy_desc); \`compression algo gzip\` + \`compression type application/json\` with $(haproxy_comp_lib); NO JWT check configured here (as nginx-light: HAProxy 2.5+ has a jwt_verify converter, not used): a lower bound of a peer's cost"
        expect_answer haproxy "http://127.0.0.1:$HAPROXY_PORT$path" 200 "content-encoding: gzip" -H "Accept-Encoding: gzip" || true
    fi
    if want direct; then
        start_uvicorn_tcp app "$DIRECT_PORT"
        add_front direct wrk "http://127.0.0.1:$DIRECT_PORT$path" 2xx "" "$REPLY" "plain app.py on TCP: no auth, no limit, no compression (the ceiling: Python's JSON response alone)"
    fi
    # The issue's condition "at equal or better compressed size": the bytes
    # of one compressed response from each front that compresses.
    local f sizes="" gate_b="" stack_b="" url hdrs
    for f in gate stack nginx haproxy; do
        case "$f" in
            gate) url="http://127.0.0.1:$GATE_PORT$path" ;;
            stack) url="http://127.0.0.1:$STACK_PORT$path" ;;
            nginx) url="http://127.0.0.1:$NGINX_PORT$path" ;;
            haproxy) url="http://127.0.0.1:$HAPROXY_PORT$path" ;;
        esac
        want "$f" || continue
        hdrs=(-H "Accept-Encoding: gzip" -H "Authorization: Bearer $JWT_TOKEN")
        local b
        b="$(curl -s -o /dev/null -w '%{size_download}' "${hdrs[@]}" "$url" || true)"
        sizes+="${sizes:+, }$f $b B"
        [[ "$f" == gate ]] && gate_b="$b"
        [[ "$f" == stack ]] && stack_b="$b"
    done
    if [[ -n "$gate_b" && -n "$stack_b" ]]; then
        local met=NO
        ((gate_b > 0 && gate_b <= stack_b)) && met=yes
        sizes+=" — gate at equal or better size than the stack: $met"
    fi
    NOTES+=("gzip response body (one request each, bytes on the wire): $sizes")
    REPORT_ARGS+=(--p999)
    measure - "${FRONTS_ORDER[@]}"
    RATIOS+=("-|gate|stack|rps|>=|2.3|gate / stack req/s"
        "-|gate|stack|p99_ms|<=|0.333|gate / stack p99"
        "-|gate|nginx|rps|>=|1|gate / nginx req/s (ahead of the best peer)"
        "-|gate|haproxy|rps|>=|1|gate / HAProxy req/s (ahead of the best peer)"
        "-|gate|direct|p99_ms|<=|0.1|gate / direct uvicorn p99 (a tenth of the worker's own tail)|17"
        "-|gate|nginx|p99_ms|<|1|gate / nginx p99 (below every peer)|17"
        "-|gate|haproxy|p99_ms|<|1|gate / HAProxy p99 (below every peer)|17"
        "-|gate|stack|p99_ms|<|1|gate / stack p99 (below every peer)|17"
        "-|gate|gate_off|rps|>=|0.97|gate / gate_off req/s (throughput kept with the limit on)|17"
        "-|gate|gate_off|p99_ms|||gate / gate_off p99 (context)"
        "-|gate_floor|gate|rps|||gate_floor / gate req/s (context: the limit's floor)"
        "-|gate_floor|gate|p99_ms|||gate_floor / gate p99 (context: the limit's floor)"
        "-|gate|direct|p999_ms|||gate / direct uvicorn p99.9 (context)"
        "-|gate|direct|rps|||gate / direct-without-compression req/s (context)"
        "-|direct|stack|rps|||direct-without-compression / stack req/s (the ceiling)"
        "-|nginx|stack|rps|||nginx / stack req/s (context)")
}
