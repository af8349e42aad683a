#!/usr/bin/env bash
# Demo: one uvicorn worker on a Unix socket behind asgi-gate on 127.0.0.1:8080.
# Ctrl-C stops both. PORT / ADMIN_PORT override the ports; GATE_BIN=path uses
# that binary instead of building target/release/asgi-gate.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PORT="${PORT:-8080}"
ADMIN_PORT="${ADMIN_PORT:-9901}"
if [[ -z "${GATE_BIN:-}" ]]; then
    echo "== building asgi-gate (release)"
    cargo build --release -p asgi-gate
    GATE_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/asgi-gate"
fi
echo "== python venv"
bash scripts/setup-python.sh

TMP="$(mktemp -d -t asgi-gate-demo.XXXXXX)"
SOCK="$TMP/app.sock"
CONFIG="$TMP/gate.yaml"
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A demo HS256 secret and admin token, new each run, and a token for the
# curl lines below (minted with the venv's PyJWT, as a Python issuer would).
DEMO_JWT_SECRET="demo-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
DEMO_ADMIN_TOKEN="admin-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export DEMO_JWT_SECRET DEMO_ADMIN_TOKEN
TOKEN="$(.venv/bin/python -c 'import jwt, os, time
print(jwt.encode({"sub": "demo-user", "jti": "demo-1", "exp": int(time.time()) + 3600},
                 os.environ["DEMO_JWT_SECRET"], algorithm="HS256"))')"

cat >"$CONFIG" <<EOF
threads: 1
listen:
  - address: 127.0.0.1:$PORT
admin:
  address: 127.0.0.1:$ADMIN_PORT
  token_env: DEMO_ADMIN_TOKEN
trusted_proxies: []
upstreams:
  app:
    sockets: [$SOCK]
    pool: { max_idle: 64, max_connections: 256, idle_timeout: 4s }
    connect_timeout: 1s
    read_timeout: 30s
limits: { max_body: 10MiB, max_header_bytes: 16KiB, header_timeout: 10s }
compression: { algorithms: [br, gzip, zstd] }
auth:
  demo:
    algorithms: [HS256]
    secret_env: DEMO_JWT_SECRET
    forward_claims: { sub: X-Auth-Subject }
rate_limits:
  per_ip: { key: client_ip, rate: 5/s, burst: 10 }
routes:
  - path: /hello
    methods: [GET]
    upstream: app
  - path: /api/{*rest}
    upstream: app
    auth: demo
    rate_limit: per_ip
  - path: /{*rest}
    upstream: app
EOF

# Over a Unix socket uvicorn sees no peer address (scope["client"] is None),
# so no IP or path in --forwarded-allow-ips can match: only '*' makes it read
# the gate's X-Forwarded-For / X-Forwarded-Proto. The socket's file
# permissions are what keep anyone else from reaching the worker.
echo "== starting uvicorn on $SOCK"
.venv/bin/uvicorn app:app --app-dir integration-tests/app --uds "$SOCK" \
    --proxy-headers --forwarded-allow-ips '*' >"$TMP/uvicorn.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    [[ -S "$SOCK" ]] && break
    kill -0 "${PIDS[0]}" 2>/dev/null || { cat "$TMP/uvicorn.log" >&2; exit 1; }
    sleep 0.1
done
[[ -S "$SOCK" ]] || { echo "uvicorn did not create $SOCK" >&2; cat "$TMP/uvicorn.log" >&2; exit 1; }

echo "== starting asgi-gate -c $CONFIG"
"$GATE_BIN" -c "$CONFIG" 2>"$TMP/gate.log" &
GATE_PID=$!
PIDS+=("$GATE_PID")
for _ in $(seq 100); do
    grep -q "listening on 127.0.0.1:$PORT" "$TMP/gate.log" && break
    kill -0 "$GATE_PID" 2>/dev/null || { cat "$TMP/gate.log" >&2; exit 1; }
    sleep 0.1
done
grep -q "listening on 127.0.0.1:$PORT" "$TMP/gate.log" \
    || { echo "asgi-gate did not start" >&2; cat "$TMP/gate.log" >&2; exit 1; }

cat <<EOF

asgi-gate is on http://127.0.0.1:$PORT (admin http://127.0.0.1:$ADMIN_PORT), worker on $SOCK
Try:
  curl -i http://127.0.0.1:$PORT/hello
  curl -s 'http://127.0.0.1:$PORT/echo/some/path?x=1' -H 'X-Forwarded-For: 6.6.6.6'   # client = your IP, not 6.6.6.6
  curl -s -X POST --data-binary @/etc/os-release http://127.0.0.1:$PORT/upload
  curl -N http://127.0.0.1:$PORT/sse
  curl -i -X DELETE http://127.0.0.1:$PORT/hello          # 405 from the gate, with Allow
  curl -s -D - -o /dev/null -H 'Accept-Encoding: br' http://127.0.0.1:$PORT/big   # compressed by the gate, not by Python
  curl -s --http2-prior-knowledge http://127.0.0.1:$PORT/echo   # h2c on the same port
JWT, limits and revocation on /api/ (the worker never sees a refused request):
  TOKEN=$TOKEN
  curl -i http://127.0.0.1:$PORT/api/hello                                  # 401 from the gate
  curl -i http://127.0.0.1:$PORT/%61pi/whoami                               # 401 too: routed as uvicorn decodes it (/api/whoami)
  curl -i 'http://127.0.0.1:$PORT/api%2Fwhoami'                             # 400: an encoded slash never reaches a route
  curl -s -H "Authorization: Bearer \$TOKEN" http://127.0.0.1:$PORT/api/whoami   # {"sub":"demo-user"}: the verified claim as X-Auth-Subject
  for i in \$(seq 15); do curl -s -o /dev/null -w '%{http_code} ' -H "Authorization: Bearer \$TOKEN" http://127.0.0.1:$PORT/api/hello; done; echo   # 429 past the burst of 10
  curl -s -X POST -H "Authorization: Bearer $DEMO_ADMIN_TOKEN" -d "{\"token\":\"\$TOKEN\"}" http://127.0.0.1:$ADMIN_PORT/revocations   # revoked until the token's exp, then forgotten
  curl -i -H "Authorization: Bearer \$TOKEN" http://127.0.0.1:$PORT/api/whoami   # 401 revoked
  curl -s http://127.0.0.1:$ADMIN_PORT/readyz
  curl -s http://127.0.0.1:$ADMIN_PORT/metrics | grep ^asgi_gate_requests_total
Logs follow (Ctrl-C stops gate and worker):
EOF
tail -n +1 -f "$TMP/gate.log" "$TMP/uvicorn.log" &
PIDS+=($!)
wait "$GATE_PID"
