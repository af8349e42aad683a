# shellcheck shell=bash disable=SC2034 # TITLE, LOAD_DESC, *_PID...: read by run.sh and common.sh
# reject: answers that never reach Python. Case 401: an invalid JWT (signed
# with another secret) on /api/hello through the gate vs nginx `return 401`
# with a small JSON body (and the Python stack rejecting it, for context), and
# the stack's floor (hyper answering the same 401 with no pipeline at all).
# Case 429: a per-IP limit of 1/h (every request after the first is 429)
# through the gate vs nginx limit_req (1r/m, then `return 429`, so the one
# request a minute that the limiter lets through is a 429 too). HAProxy does
# both as nginx does: `http-request return` 401 on /api/ (no token check), and
# on /limited a stick-table per source IP (http_req_rate over 1 min), tracked
# and read on every request, then `return` 429 whatever the rate.
scenario_reject() {
    TITLE="Rejections: invalid JWT → 401 and over-limit → 429, gate vs nginx vs HAProxy"
    LOAD_DESC="wrk -t$WRK_THREADS -c$CONNS -d$DURATION --latency [-H 'Authorization: Bearer <JWT signed with another key>'] http://127.0.0.1:PORT/..., loopback"
    DESC+=("every answer must be the expected code: wrk counts statuses >= 400 alike, so each run must have all its answers >= 400 and a request by hand after it must get the exact code")
    start_uvicorn_uds app "$SOCK"
    local uds="$REPLY"
    local body429='{"error":"rate_limited","detail":"too many requests"}'
    if want nginx; then
        start_nginx "$SOCK" "    limit_req_zone \$binary_remote_addr zone=one:1m rate=1r/m;" "$NGINX_401_LOCATION
        location = /limited {
            limit_req zone=one;
            limit_req_status 429;
            default_type application/json;
            add_header Retry-After 60 always;
            add_header X-Request-Id \$request_id always;
            add_header Cache-Control no-store always;
            return 429 '$body429';
        }"
        NGINX_PID="$REPLY"
    fi
    if want haproxy; then
        start_haproxy "$SOCK" "    stick-table type ip size 100k expire 1h store http_req_rate(1m)
    http-request return status 401 content-type application/json string '{\"error\":\"invalid_token\",\"detail\":\"the token is not valid\"}' hdr WWW-Authenticate 'Bearer realm=\"asgi-gate\", error=\"invalid_token\"' hdr Cache-Control no-store if { path_beg /api/ }
    http-request track-sc0 src if { path /limited }
    http-request return status 429 content-type application/json string '$body429' hdr Retry-After 60 hdr Cache-Control no-store if { path /limited } { sc_http_req_rate(0) ge 0 }"
        HAPROXY_PID="$REPLY"
    fi
    # --- 401
    CASES+=("401=invalid JWT on /api/hello")
    local -a fronts=()
    if want gate; then
        gate_401_yaml "$TMP/reject/gate.yaml" "$GATE_PORT" "$ADMIN_PORT"
        if try_gate gate "$GATE_PORT" "$TMP/reject/gate.yaml"; then
            add_front gate wrk "http://127.0.0.1:$GATE_PORT/api/hello" 401 "$REPLY" "$uds" "asgi-gate (threads: 1) with an HS256 policy on /api/"
            fronts+=(gate)
        fi
    fi
    if want nginx; then
        add_front nginx wrk "http://127.0.0.1:$NGINX_PORT/api/hello" 401 "$(nginx_pids)" "$uds" "nginx, 1 worker: \`return 401\` with a small JSON body and an X-Request-Id, as the gate answers (checks no token at all)"
        fronts+=(nginx)
    fi
    if want haproxy; then
        add_front haproxy wrk "http://127.0.0.1:$HAPROXY_PORT/api/hello" 401 "$(haproxy_pids)" "$uds" "HAProxy $(haproxy_version), nbthread 1: \`http-request return\` 401 with a small JSON body and an X-Request-Id, as the gate answers (checks no token at all)"
        fronts+=(haproxy)
    fi
    if want hyper; then
        start_floor reject
        add_front hyper wrk "http://127.0.0.1:$FLOOR_PORT/api/hello" 401 "$REPLY" "$uds" "the stack's floor: hyper + hyper-util as the gate sets them up answering every request with the gate's 401, no pipeline, no token check (benches/src/bin/hyper_floor.rs)"
        fronts+=(hyper)
    fi
    if want stack; then
        RATE_LIMIT_RPS=1000000000 RATE_LIMIT_BURST=1000000000 start_uvicorn_tcp app_stack "$STACK_PORT"
        add_front stack wrk "http://127.0.0.1:$STACK_PORT/api/hello" 401 "" "$REPLY" "app_stack.py on TCP: PyJWT rejects the token in Python"
        fronts+=(stack)
    fi
    set_headers "Authorization: Bearer $BAD_JWT_TOKEN"
    measure 401 "${fronts[@]}"
    # --- 429
    CASES+=("429=over a per-IP limit")
    fronts=()
    if want gate; then
        gate_yaml "$TMP/reject/gate429.yaml" "$GATE2_PORT" "$ADMIN2_PORT" "rate_limits:
  one: { key: client_ip, rate: 1/h, burst: 1 }" "  - path: /{*rest}
    upstream: app
    rate_limit: one
  - path: /
    upstream: app
    rate_limit: one"
        if try_gate gate_429 "$GATE2_PORT" "$TMP/reject/gate429.yaml"; then
            add_front gate_429 wrk "http://127.0.0.1:$GATE2_PORT/hello" 429 "$REPLY" "$uds" "asgi-gate (threads: 1), per-IP limit 1/h burst 1 on every route"
            fronts+=(gate_429)
            expect_answer gate_429 "http://127.0.0.1:$GATE2_PORT/hello" 429 "retry-after" || true
        fi
    fi
    if want nginx; then
        add_front nginx_429 wrk "http://127.0.0.1:$NGINX_PORT/limited" 429 "$(nginx_pids)" "$uds" "nginx, 1 worker: limit_req 1r/m, status 429, small JSON body, X-Request-Id"
        fronts+=(nginx_429)
    fi
    if want haproxy; then
        add_front haproxy_429 wrk "http://127.0.0.1:$HAPROXY_PORT/limited" 429 "$(haproxy_pids)" "$uds" "HAProxy, nbthread 1: stick-table per source IP (http_req_rate over 1 min) tracked and read, then \`return\` 429 with a small JSON body, Retry-After, X-Request-Id"
        fronts+=(haproxy_429)
        expect_answer haproxy_429 "http://127.0.0.1:$HAPROXY_PORT/limited" 429 "retry-after" || true
    fi
    set_headers
    measure 429 "${fronts[@]}"
    RATIOS+=("401|gate|nginx|rps|>=|1|gate / nginx req/s (401)"
        "401|gate|stack|rps|||gate / stack req/s (401, context)"
        "401|gate|haproxy|rps|>=|1|gate / HAProxy req/s (401)"
        "401|gate|nginx|front_us|<=|1|gate / nginx front CPU per 401"
        "401|gate|haproxy|front_us|<=|1|gate / HAProxy front CPU per 401"
        "401|hyper|nginx|front_us|||stack floor / nginx front CPU per 401 (context)"
        "401|gate|hyper|front_us|||gate / stack floor front CPU per 401 (the pipeline's share)"
        "429|gate_429|nginx_429|rps|>=|1|gate / nginx req/s (429, ahead of the best peer)"
        "429|gate_429|haproxy_429|rps|>=|1|gate / HAProxy req/s (429)")
}
