# shellcheck shell=bash disable=SC2034 # TITLE, LOAD_DESC, *_PID...: read by run.sh and common.sh
# auth_small: GET /api/hello with a valid HS256 JWT, a tiny JSON answer. gate
# (JWT + per-IP limit) before the plain app vs the Python stack reached directly;
# direct uvicorn without any auth as the ceiling. No nginx or HAProxy rows:
# this scenario has no proxy peer (nginx-light has no JWT check; HAProxy 2.5+
# has a jwt_verify converter, not set up here).
scenario_auth_small() {
    TITLE="Token-authenticated small JSON: gate + plain app vs the Python middleware stack"
    LOAD_DESC="wrk -t$WRK_THREADS -c$CONNS -d$DURATION --latency -H 'Authorization: Bearer <HS256 JWT>' http://127.0.0.1:PORT/api/hello, loopback"
    DESC+=("GET /api/hello with a valid HS256 JWT; rate limits far above the load; no Accept-Encoding (the answer is below every min size anyway)")
    set_headers "Authorization: Bearer $JWT_TOKEN"
    start_uvicorn_uds app "$SOCK"
    local uds="$REPLY"
    if want gate; then
        gate_yaml "$TMP/auth_small/gate.yaml" "$GATE_PORT" "$ADMIN_PORT" "auth:
  default:
    algorithms: [HS256]
    secret_env: JWT_SECRET
rate_limits:
  per_ip: { key: client_ip, rate: 1000000/s, burst: 1000000 }" "  - path: /api/{*rest}
    upstream: app
    auth: default
    rate_limit: per_ip
  - path: /{*rest}
    upstream: app
    rate_limit: per_ip
  - path: /
    upstream: app"
        if try_gate gate "$GATE_PORT" "$TMP/auth_small/gate.yaml"; then
            add_front gate wrk "http://127.0.0.1:$GATE_PORT/api/hello" 2xx "$REPLY" "$uds" "asgi-gate (threads: 1): JWT HS256 + per-IP limit, plain app.py behind"
            expect_answer gate "http://127.0.0.1:$GATE_PORT/api/hello" 200 "" -H "Authorization: Bearer $JWT_TOKEN" || true
            expect_answer "gate without a token" "http://127.0.0.1:$GATE_PORT/api/hello" 401 "" || true
        fi
    fi
    if want stack; then
        RATE_LIMIT_RPS=1000000000 RATE_LIMIT_BURST=1000000000 start_uvicorn_tcp app_stack "$STACK_PORT"
        add_front stack wrk "http://127.0.0.1:$STACK_PORT/api/hello" 2xx "" "$REPLY" "uvicorn running app_stack.py on TCP: token bucket per IP, PyJWT HS256, GZipMiddleware"
        expect_answer "stack without a token" "http://127.0.0.1:$STACK_PORT/api/hello" 401 "" || true
    fi
    if want direct; then
        start_uvicorn_tcp app "$DIRECT_PORT"
        add_front direct wrk "http://127.0.0.1:$DIRECT_PORT/api/hello" 2xx "" "$REPLY" "plain app.py on TCP, no auth (the ceiling)"
    fi
    measure - "${FRONTS_ORDER[@]}"
    RATIOS+=("-|gate|stack|rps|>=|2.6|gate / stack req/s"
        "-|gate|direct|rps|||gate / direct-without-auth req/s (context)"
        "-|direct|stack|rps|||direct-without-auth / stack req/s (the ceiling)")
}
