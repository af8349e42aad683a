#!/usr/bin/env bash
# Gate CPU per full TLS handshake: a TLS listener with a fresh self-signed
# RSA-2048 certificate, `openssl s_time -new` (a new handshake per connection)
# for DURATION seconds, utime+stime of the gate process divided by the
# handshakes. Loopback only. Writes benches/results/tls.md.
#   bash benches/tls_handshake.sh          # DURATION=8, GATE_BIN=target/release/asgi-gate
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
DURATION="${DURATION:-8}"
PORT="${PORT:-48443}"
ADMIN_PORT="${ADMIN_PORT:-49901}"
OUT_DIR="${OUT_DIR:-$REPO/benches/results}"
if [[ -z "${GATE_BIN:-}" ]]; then
    cargo build --release -p asgi-gate >&2
    GATE_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/asgi-gate"
fi
command -v openssl >/dev/null || { echo "tls_handshake: needs the openssl CLI" >&2; exit 1; }
bash scripts/setup-python.sh >&2
TMP="$(mktemp -d -t asgi-gate-tls.XXXXXX)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$TMP/key.pem" -out "$TMP/cert.pem" \
    -days 1 -subj "/CN=localhost" 2>/dev/null
.venv/bin/uvicorn app:app --app-dir integration-tests/app --uds "$TMP/w.sock" \
    --no-access-log --log-level warning >"$TMP/uv.log" 2>&1 &
PIDS+=($!)
cat >"$TMP/gate.yaml" <<YAML
listen:
  - address: 127.0.0.1:$PORT
    tls: { cert: $TMP/cert.pem, key: $TMP/key.pem }
admin:
  address: 127.0.0.1:$ADMIN_PORT
upstreams:
  app:
    sockets: [$TMP/w.sock]
routes:
  - path: /{*rest}
    upstream: app
YAML
for _ in $(seq 50); do [[ -S "$TMP/w.sock" ]] && break; sleep 0.2; done
"$GATE_BIN" --no-access-log -c "$TMP/gate.yaml" >"$TMP/gate.log" 2>&1 &
GATE=$!
PIDS+=("$GATE")
for _ in $(seq 50); do grep -q "listening on" "$TMP/gate.log" && break; sleep 0.1; done
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
t0=$(ticks "$GATE")
line=$(openssl s_time -connect "127.0.0.1:$PORT" -new -time "$DURATION" 2>/dev/null | grep "connections in" | tail -1)
t1=$(ticks "$GATE")
n=$(awk '{print $1}' <<<"$line")
[[ "$n" =~ ^[0-9]+$ && "$n" -gt 0 ]] || { echo "tls_handshake: no handshakes measured ($line)" >&2; exit 1; }
us=$(( (t1 - t0) * 1000000 / hz / n ))
provider=$(grep -o 'crypto::[a-z_]*::default_provider' proxy/src/gate/tls.rs | cut -d: -f3 || true)
mkdir -p "$OUT_DIR"
{
    echo "# TLS handshake cost of the gate"
    echo
    echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
    echo "- date: $(date -u '+%F %H:%M UTC')"
    echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo uncommitted)"
    echo "- command: \`DURATION=$DURATION bash benches/tls_handshake.sh\`"
    echo "- load: \`openssl s_time -new -time $DURATION\` (one client, a full handshake per connection, RSA-2048 self-signed certificate)"
    echo
    echo "| rustls provider | handshakes | gate CPU per handshake |"
    echo "| --- | --- | --- |"
    echo "| ${provider:-?} | $n in ${DURATION} s | ${us} µs |"
} >"$OUT_DIR/tls.md"
cat "$OUT_DIR/tls.md"
