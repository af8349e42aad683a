# shellcheck shell=bash disable=SC2034 # CLK_TCK, META_*, JWT_*...: read by run.sh and the scenarios
# Shared plumbing of the load benches, sourced by benches/run.sh (and through it
# by hello.sh): tools, processes started and stopped by PID, the fronts (uvicorn
# on a Unix socket or TCP, nginx under a private prefix, HAProxy from a private
# config, asgi-gate), the measuring loop (runs alternated between fronts, order
# rotated each rep; a closed-loop client or benches/openloop.py), CPU
# from /proc/PID/stat and RSS from /proc/PID/status, and the raw rows that
# benches/report.py turns into benches/results/<scenario>.{csv,md}.
#
# Nothing here listens anywhere but 127.0.0.1, and every load is bounded in time
# (and wrapped in `timeout`).

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/.." && pwd)"

REPS="${REPS:-3}"
DURATION="${DURATION:-7s}"
CONNS="${CONNS:-64}"
WRK_THREADS="${WRK_THREADS:-1}"
WARMUP="${WARMUP:-2s}"
OUT_DIR="${OUT_DIR:-$REPO/benches/results}"
GATE_PORT="${GATE_PORT:-18080}"
NGINX_PORT="${NGINX_PORT:-18081}"
DIRECT_PORT="${DIRECT_PORT:-18082}"
STACK_PORT="${STACK_PORT:-18083}"
GATE2_PORT="${GATE2_PORT:-18084}"
NGINX_H2_PORT="${NGINX_H2_PORT:-18085}"
FLOOR_PORT="${FLOOR_PORT:-18086}"
HAPROXY_PORT="${HAPROXY_PORT:-18087}"
VARNISH_PORT="${VARNISH_PORT:-18088}"
GATE3_PORT="${GATE3_PORT:-18089}"
ADMIN_PORT="${ADMIN_PORT:-18901}"
ADMIN2_PORT="${ADMIN2_PORT:-18902}"
ADMIN3_PORT="${ADMIN3_PORT:-18903}"
GZIP_LEVEL="${GZIP_LEVEL:-6}" # the gate's default; nginx is given the same
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
GATE_BIN_GIVEN="${GATE_BIN:-}"
BUILD_GATE=1
[[ -n "${GATE_BIN:-}" ]] && BUILD_GATE=0
GATE_BIN="${GATE_BIN:-$TARGET_DIR/release/asgi-gate}"
PYVENV="$REPO/.venv"
CLK_TCK="$(getconf CLK_TCK)"

log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# dur_s 8s|500ms|2m|8 -> seconds (integer, at least 1)
dur_s() {
    local d="$1" n
    case "$d" in
    *ms) n=$(((${d%ms} + 999) / 1000)) ;;
    *s) n="${d%s}" ;;
    *m) n=$((${d%m} * 60)) ;;
    *) n="$d" ;;
    esac
    ((n < 1)) && n=1
    echo "$n"
}

# --- tools ------------------------------------------------------------------
# ensure_tools CMD:PACKAGE...: apt-get install the packages of missing commands.
ensure_tools() {
    local spec cmd pkg
    local -a missing=()
    for spec in "$@"; do
        cmd="${spec%%:*}" pkg="${spec#*:}"
        command -v "$cmd" >/dev/null || [[ -x "/usr/sbin/$cmd" ]] || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    [[ $EUID -eq 0 ]] || die "missing ${missing[*]}; install them or run as root"
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The bench-only venv (matplotlib for the chart), apart from the pinned test venv.
ensure_bench_venv() {
    local venv="$BENCH_DIR/.venv" req="$BENCH_DIR/requirements.txt" want
    want="$({ cat "$req"; python3 -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
    if [[ -x "$venv/bin/python" && "$(cat "$venv/.stamp" 2>/dev/null)" == "$want" ]]; then
        return 0
    fi
    log "creating $venv (matplotlib for the chart)"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2
    echo "$want" >"$venv/.stamp"
}

ensure_gate() {
    if ((BUILD_GATE)); then
        log "cargo build --release -p asgi-gate"
        if ! cargo build --release -p asgi-gate >&2; then
            [[ -x "$GATE_BIN" ]] || die "the gate does not build and there is no $GATE_BIN"
            log "WARNING: the build failed; using the last built $GATE_BIN ($(date -r "$GATE_BIN" '+%F %T'))"
            GATE_NOTE="gate binary: the last built one ($(date -r "$GATE_BIN" '+%F %T')); the tree did not build"
        fi
    fi
    [[ -x "$GATE_BIN" ]] || die "no gate binary at $GATE_BIN"
}

# --- processes ----------------------------------------------------------------
PIDS=()
TMP=""
init_tmp() {
    TMP="$(mktemp -d -t asgi-gate-bench.XXXXXX)"
}
# kill_wait PID: TERM, up to 5 s, then KILL; reaps it.
kill_wait() {
    local pid="$1" i
    kill "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
# stop_all: everything this run started, newest first.
stop_all() {
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill_wait "${PIDS[i]}"; done
    PIDS=()
}
cleanup() {
    set +e
    stop_all
    [[ -n "$TMP" && -d "$TMP" && -z "${KEEP_TMP:-}" ]] && rm -rf "$TMP"
    return 0
}
install_traps() {
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

forget_pid() {
    local p
    local -a keep=()
    for p in "${PIDS[@]}"; do [[ "$p" == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}
# start_bg LOG CMD...: run in the background, remember the PID (in REPLY too).
start_bg() {
    local logf="$1"
    shift
    "$@" >"$logf" 2>&1 &
    REPLY=$!
    PIDS+=("$REPLY")
}

# wait_http PID URL [curl args...]: until URL answers 2xx, or PID dies (15 s).
wait_http() {
    local pid="$1" url="$2"
    shift 2
    for _ in $(seq 150); do
        kill -0 "$pid" 2>/dev/null || return 1
        curl -sf -o /dev/null "$@" "$url" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}
show_log() { log "$1; its log:"; tail -n 40 "$2" >&2; }

UVICORN_ARGS=(--app-dir "$REPO/integration-tests/app" --no-access-log --log-level warning)

# start_uvicorn_uds MODULE SOCK: a worker behind the proxies (believes their
# X-Forwarded-For, as a real deployment would run it). Sets REPLY to its PID.
start_uvicorn_uds() {
    local module="$1" sock="$2"
    local logf="$TMP/uvicorn-${sock//\//_}.log"
    start_bg "$logf" "$PYVENV/bin/uvicorn" "$module:app" "${UVICORN_ARGS[@]}" \
        --uds "$sock" --proxy-headers --forwarded-allow-ips '*'
    local pid="$REPLY"
    wait_http "$pid" http://localhost/healthz --unix-socket "$sock" \
        || { show_log "uvicorn $module on $sock failed to start" "$logf"; exit 1; }
    REPLY="$pid"
}
# start_uvicorn_tcp MODULE PORT: a worker reached directly.
start_uvicorn_tcp() {
    local module="$1" port="$2"
    local logf="$TMP/uvicorn-$port.log"
    start_bg "$logf" "$PYVENV/bin/uvicorn" "$module:app" "${UVICORN_ARGS[@]}" --host 127.0.0.1 --port "$port"
    local pid="$REPLY"
    wait_http "$pid" "http://127.0.0.1:$port/healthz" \
        || { show_log "uvicorn $module on :$port failed to start" "$logf"; exit 1; }
    REPLY="$pid"
}

# write_nginx_conf SOCK HTTP_EXTRA SERVER_EXTRA [LISTEN_EXTRA] [TOP_EXTRA]:
# $TMP/nginx/nginx.conf for one worker under a private prefix, keepalive pool
# to the socket. HTTP_EXTRA goes into http{} (e.g. gzip), SERVER_EXTRA into
# server{} before the catch-all proxy location (it may add more specific
# locations). LISTEN_EXTRA: more `listen` lines; TOP_EXTRA: main-context
# lines (e.g. `master_process off;`). REPLY = the prefix directory.
write_nginx_conf() {
    local sock="$1" http_extra="$2" server_extra="$3" listen_extra="${4:-}" top_extra="${5:-}" dir="$TMP/nginx" user_line=""
    mkdir -p "$dir"
    # As root nginx would drop its worker to nobody, who cannot reach the socket
    # in our private temp dir: keep it as the current user.
    [[ $EUID -eq 0 ]] && user_line="user $(id -un) $(id -gn);"
    cat >"$dir/nginx.conf" <<EOF
$user_line
$top_extra
worker_processes 1;
worker_rlimit_nofile 16384;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    # The default of 1000 requests per connection would make nginx alone
    # reconnect during a run; the gate has no such cap.
    keepalive_requests 1000000;
    map \$http_upgrade \$connection_upgrade { default upgrade; '' ''; }
    upstream app {
        server unix:$sock;
        keepalive 64;
        keepalive_requests 1000000;
    }
$http_extra
    server {
        listen 127.0.0.1:$NGINX_PORT;
$listen_extra
$server_extra
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            # '' keeps the upstream connection pooled; 'upgrade' on a WebSocket.
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection \$connection_upgrade;
            proxy_set_header Host \$host;
            # The headers the gate's contract sends the worker, so that both
            # workers parse the same request; and the id back to the client.
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Request-Id \$request_id;
            add_header X-Request-Id \$request_id always;
            proxy_read_timeout 60s;
        }
    }
}
EOF
    nginx_bin -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" -t -q \
        || { show_log "nginx -t failed" "$dir/error.log"; exit 1; }
    REPLY="$dir"
}

# start_nginx SOCK HTTP_EXTRA SERVER_EXTRA [LISTEN_EXTRA]: write_nginx_conf,
# then serve. REPLY = master PID.
start_nginx() {
    write_nginx_conf "$@"
    local dir="$REPLY"
    start_bg "$dir/stdout.log" "$(nginx_bin_path)" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
    local pid="$REPLY"
    wait_http "$pid" "http://127.0.0.1:$NGINX_PORT/healthz" \
        || { show_log "nginx failed to start" "$dir/error.log"; exit 1; }
    REPLY="$pid"
}
nginx_bin_path() { command -v nginx || echo /usr/sbin/nginx; }
nginx_bin() { "$(nginx_bin_path)" "$@"; }

# write_haproxy_conf SOCK [FRONTEND_EXTRA] [BACKEND_EXTRA]: $TMP/haproxy/haproxy.cfg,
# Debian's haproxy set up as nginx is: one thread, one process, keep-alive to
# the worker's socket with `http-reuse always`, no server maxconn (a static
# peer: it opens as many worker connections as it has requests in flight),
# timeouts far above any run, no log; it sends the worker the headers the
# gate's contract sends (X-Forwarded-For/Proto/Host, X-Request-Id) and returns
# X-Request-Id on every answer, its own included. FRONTEND_EXTRA: lines in the
# frontend before `default_backend` (e.g. `http-request return ...`);
# BACKEND_EXTRA: lines in the backend (e.g. compression). Its own clear-text
# bind speaks HTTP/1.1 and, on the HTTP/2 preface, h2c (prior knowledge).
# REPLY = the directory.
write_haproxy_conf() {
    local sock="$1" fe_extra="${2:-}" be_extra="${3:-}" dir="$TMP/haproxy" maxconn
    mkdir -p "$dir"
    # Two fds per proxied connection: as many as this shell's limit allows.
    maxconn=$((($(ulimit -n) - 100) / 2))
    ((maxconn > 50000)) && maxconn=50000
    cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn $maxconn
    pidfile $dir/haproxy.pid

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-request 60s
    timeout http-keep-alive 120s
    timeout queue 120s
    timeout tunnel 1h

frontend fe
    bind 127.0.0.1:$HAPROXY_PORT
    maxconn $maxconn
    unique-id-format %[uuid()]
    unique-id-header X-Request-Id
    option forwardfor
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-after-response set-header X-Request-Id %[unique-id]
$fe_extra
    default_backend app

backend app
    http-reuse always
    server app unix@$sock
$be_extra
EOF
    "$(haproxy_bin_path)" -c -q -f "$dir/haproxy.cfg" >"$dir/check.log" 2>&1 \
        || { show_log "haproxy -c failed" "$dir/check.log"; exit 1; }
    REPLY="$dir"
}

# start_haproxy SOCK [FRONTEND_EXTRA] [BACKEND_EXTRA]: write_haproxy_conf, then
# serve in the foreground (-db: one process, no master). REPLY = its PID.
start_haproxy() {
    write_haproxy_conf "$@"
    local dir="$REPLY"
    start_bg "$dir/haproxy.log" "$(haproxy_bin_path)" -db -f "$dir/haproxy.cfg"
    local pid="$REPLY"
    wait_http "$pid" "http://127.0.0.1:$HAPROXY_PORT/healthz" \
        || { show_log "haproxy failed to start" "$dir/haproxy.log"; exit 1; }
    REPLY="$pid"
}
haproxy_bin_path() { command -v haproxy || echo /usr/sbin/haproxy; }
# haproxy_comp_lib: the compression library this haproxy was built with (-vv).
haproxy_comp_lib() {
    local vv
    vv="$("$(haproxy_bin_path)" -vv 2>/dev/null)"
    if grep -q 'Built with libslz' <<<"$vv"; then
        echo "libslz (built with USE_SLZ, without zlib: a stateless deflate with a single level, whose ratio is about zlib level 1; \`tune.comp.maxlevel\` only matters with zlib)"
    elif grep -q 'Built with zlib' <<<"$vv"; then
        echo "zlib at \`tune.comp.maxlevel\` (default 1)"
    else
        echo "an unknown library (see haproxy -vv)"
    fi
}
# haproxy_version: e.g. 2.6.12-1+deb12u4.
haproxy_version() { "$(haproxy_bin_path)" -v 2>/dev/null | awk 'NR==1 {print $3}'; }

# The admin address of each gate started, by PID: run_one reads the gate's
# own sheds and its concurrency limit there.
declare -A GATE_ADMIN=()

# start_varnish SOCK: Debian's Varnish before the worker's socket (a UDS
# backend, VCL 4.1), one thread pool (`thread_pools=1`), malloc storage of
# 256 MiB, the built-in VCL (it caches what the worker marks cacheable and
# coalesces concurrent misses on its waiting list), `X-Cache: HIT|MISS` added.
# `-j none`: no jail, so it runs as this user and can reach the socket in our
# private temp dir. REPLY = the manager's PID (the cache process is its child).
start_varnish() {
    local sock="$1" dir="$TMP/varnish"
    mkdir -p "$dir/work"
    cat >"$dir/default.vcl" <<EOF
vcl 4.1;
backend app { .path = "$sock"; }
sub vcl_deliver {
    if (obj.hits > 0) { set resp.http.X-Cache = "HIT"; } else { set resp.http.X-Cache = "MISS"; }
}
EOF
    start_bg "$dir/varnishd.log" "$(varnish_bin_path)" -F -j none -n "$dir/work" -f "$dir/default.vcl" \
        -a "127.0.0.1:$VARNISH_PORT" -s malloc,256m -p thread_pools=1
    local pid="$REPLY"
    wait_http "$pid" "http://127.0.0.1:$VARNISH_PORT/healthz" \
        || { show_log "varnishd failed to start" "$dir/varnishd.log"; exit 1; }
    REPLY="$pid"
}
varnish_bin_path() { command -v varnishd || echo /usr/sbin/varnishd; }
varnish_version() { "$(varnish_bin_path)" -V 2>&1 | grep -o 'varnish-[0-9.]*' | head -n1; }

# gate_metric ADDR NAME: REPLY = the sum of the samples of metric NAME on the
# gate's admin /metrics (integers), "" when unreachable or absent. Bash's
# /dev/tcp, no curl: a sampler running beside a load costs next to nothing.
gate_metric() {
    local addr="$1" name="$2" line v sum=0 found=0 fd
    REPLY=""
    exec {fd}<>"/dev/tcp/${addr%:*}/${addr##*:}" || return 0
    printf 'GET /metrics HTTP/1.0\r\nHost: %s\r\n\r\n' "$addr" >&"$fd"
    while IFS= read -r -t 2 line <&"$fd"; do
        line="${line%$'\r'}"
        if [[ "$line" == "$name{"* || "$line" == "$name "* ]]; then
            v="${line##* }"
            sum=$((sum + ${v%%.*}))
            found=1
        fi
    done
    exec {fd}>&-
    ((found)) && REPLY="$sum"
    return 0
}
# limit_sampler OUT ADDR: every second, the gate's summed adaptive limit
# appended to OUT (until killed). One Python process for the whole run, not
# gate_metric in a loop: bash reads a socket one byte per read(2), thousands
# of syscalls per sample, and beside a hello run that loop (every 0.25 s)
# took 3-11 % of the gate front's throughput in paired runs; the worker, held
# to a few requests by the limit, idles whenever the gate's core is taken.
# Once a second keeps the sampler's own wake-ups out of the gate's p99.
limit_sampler() {
    exec python3 - "$1" "$2" <<'PY'
import http.client, sys, time
out, addr = sys.argv[1], sys.argv[2]
host, port = addr.rsplit(":", 1)
name = "asgi_gate_upstream_concurrency_limit"
with open(out, "a") as f:
    while True:
        try:
            c = http.client.HTTPConnection(host, int(port), timeout=2)
            c.request("GET", "/metrics")
            body = c.getresponse().read().decode()
            c.close()
            vals = [line.rsplit(" ", 1)[1] for line in body.splitlines()
                    if line.startswith(name + "{") or line.startswith(name + " ")]
            if vals:
                f.write(f"{sum(int(float(v)) for v in vals)}\n")
                f.flush()
        except (OSError, ValueError, http.client.HTTPException):
            pass
        time.sleep(1)
PY
}

# start_gate NAME PORT YAML_FILE: serve; REPLY = PID. Returns 2 (and sets
# SKIP_REASON) when this build refuses a section of the config as not built
# yet, or refuses `concurrency` as an unknown key (a build from before the
# adaptive limit, issue 17); any other failure to start ends the run.
start_gate() {
    local name="$1" port="$2" yaml="$3" logf="$TMP/$1.log" pid
    # nginx runs with access_log off, so the gate runs without its access log
    # too (GATE_ACCESS_LOG=1 to measure it with).
    if [[ "${GATE_ACCESS_LOG:-0}" == 1 ]]; then
        start_bg "$logf" "$GATE_BIN" -c "$yaml"
    else
        start_bg "$logf" "$GATE_BIN" --no-access-log -c "$yaml"
    fi
    pid="$REPLY"
    if wait_http "$pid" "http://127.0.0.1:$port/healthz"; then
        local admin
        admin="$(sed -n '/^admin:/,/address:/s/^ *address: *//p' "$yaml" | head -n1)"
        [[ -n "$admin" ]] && GATE_ADMIN[$pid]="$admin"
        REPLY="$pid"
        return 0
    fi
    wait "$pid" 2>/dev/null || true
    # shellcheck disable=SC2016 # backquotes are literal here
    if grep -q 'not supported by this build' "$logf"; then
        SKIP_REASON="$(grep -o '`[^`]*` is not supported' "$logf" | sed 's/`\([^`]*\)`.*/\1/' | paste -sd, -)"
        return 2
    fi
    # shellcheck disable=SC2016 # backquotes are literal here
    if grep -q 'unknown key `concurrency`' "$logf"; then
        SKIP_REASON="concurrency (an unknown key to this build)"
        return 2
    fi
    show_log "asgi-gate ($name) failed to start" "$logf"
    exit 1
}

# ensure_floor: FLOOR_BIN, the stack's floor (benches/src/bin/hyper_floor.rs:
# hyper + hyper-util as the gate sets them up, no pipeline), built when
# missing or when the gate is built too.
FLOOR_BIN="$TARGET_DIR/release/hyper_floor"
ensure_floor() {
    if ((BUILD_GATE)) || [[ ! -x "$FLOOR_BIN" ]]; then
        cargo build --release -p asgi-gate-benches --bin hyper_floor >&2 || die "hyper_floor does not build"
    fi
}

# start_floor MODE [SOCK]: the floor on FLOOR_PORT. Sets REPLY to its PID.
start_floor() {
    ensure_floor
    start_bg "$TMP/floor.log" "$FLOOR_BIN" "$1" "127.0.0.1:$FLOOR_PORT" ${2:+"$2"}
    local pid="$REPLY"
    wait_http "$pid" "http://127.0.0.1:$FLOOR_PORT/healthz" || { show_log "hyper_floor failed to start" "$TMP/floor.log"; exit 1; }
    REPLY="$pid"
}

# --- measuring ------------------------------------------------------------------
# cpu_ticks PID...: utime+stime of the processes (all threads) into REPLY.
# Built-ins only: no fork, so nothing is reaped into our own cutime.
cpu_ticks() {
    local sum=0 pid s
    local -a f
    for pid in "$@"; do
        { read -r s <"/proc/$pid/stat"; } 2>/dev/null || continue
        s="${s##*) }" # after "(comm)": state f[0], utime f[11], stime f[12]
        read -r -a f <<<"$s"
        sum=$((sum + f[11] + f[12]))
    done
    REPLY="$sum"
}
# self_child_ticks: cutime+cstime of this shell = CPU of the children it reaped.
self_child_ticks() {
    local s
    local -a f
    read -r s <"/proc/$BASHPID/stat"
    s="${s##*) }"
    read -r -a f <<<"$s"
    REPLY=$((f[13] + f[14]))
}
# rss_kb PID...: summed VmRSS into REPLY (shared pages of nginx's master and
# worker counted twice, as `ps` would).
rss_kb() {
    local sum=0 pid k v _
    for pid in "$@"; do
        while read -r k v _; do
            [[ "$k" == VmRSS: ]] && { sum=$((sum + v)); break; }
        done <"/proc/$pid/status" 2>/dev/null || true
    done
    REPLY="$sum"
}
# rss_sampler OUT PID...: every 0.2 s, the peak summed RSS into OUT (until killed).
rss_sampler() {
    local out="$1" peak=0
    shift
    while :; do
        rss_kb "$@"
        ((REPLY > peak)) && { peak="$REPLY"; echo "$peak" >"$out"; }
        sleep 0.2
    done
}
children_of() {
    local parent="$1" st s
    local -a f
    for st in /proc/[0-9]*/stat; do
        { read -r s <"$st"; } 2>/dev/null || continue
        s="${s##*) }"
        read -r -a f <<<"$s"
        [[ "${f[1]}" == "$parent" ]] && echo "${st//[^0-9]/}"
    done
    return 0
}

# A front is what a load run targets. Scenarios register them:
#   add_front NAME CLIENT URL EXPECT "FRONT PIDS" "WORKER PIDS" [DESCRIPTION]
# CLIENT: wrk | h2c | h1 (h2load) | ws | openloop (benches/openloop.py at
# OL_RATE); EXPECT: 2xx, 401 or 429 (every answer must be that), or any (an
# open-loop front: its non-2xx answers are sheds, reported apart); FRONT
# PIDS: the proxy's processes (empty when the client talks to uvicorn
# itself); WORKER PIDS: the uvicorn behind it (or reached directly).
declare -A F_CLIENT F_URL F_EXPECT F_PIDS F_WORKER F_DESC
FRONTS_ORDER=()
add_front() {
    F_CLIENT[$1]="$2" F_URL[$1]="$3" F_EXPECT[$1]="$4" F_PIDS[$1]="$5" F_WORKER[$1]="$6" F_DESC[$1]="${7:-}"
    FRONTS_ORDER+=("$1")
}
# set_front_client FRONT CLIENT EXPECT: measure FRONT with another client.
set_front_client() { F_CLIENT[$1]="$2" F_EXPECT[$1]="$3"; }
reset_fronts() {
    F_CLIENT=() F_URL=() F_EXPECT=() F_PIDS=() F_WORKER=() F_DESC=()
    FRONTS_ORDER=()
}

WRK_LUA=""
write_wrk_lua() {
    WRK_LUA="$TMP/report.lua"
    cat >"$WRK_LUA" <<'EOF'
-- headers from the WRK_HEADERS env var ("Name: value" lines), then the summary
-- line (p99.9 last: wrk's --latency stops at p99).
for line in string.gmatch(os.getenv("WRK_HEADERS") or "", "[^\n]+") do
  local k, v = string.match(line, "^([^:]+):%s*(.*)$")
  if k then wrk.headers[k] = v end
end
-- WRK_RANGE="STEP TOTAL" (scenario static_range): each request asks for the
-- next STEP bytes of a TOTAL-byte file, wrapping. Unset, no request() hook:
-- wrk then sends its one prepared request, as before.
local range = os.getenv("WRK_RANGE")
if range and range ~= "" then
  local step, total = string.match(range, "^(%d+) (%d+)$")
  step, total = tonumber(step), tonumber(total)
  local at = 0
  request = function()
    local last = math.min(at + step, total) - 1
    wrk.headers["Range"] = string.format("bytes=%d-%d", at, last)
    at = at + step
    if at >= total then at = 0 end
    return wrk.format(nil)
  end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.timeout, e.status, latency:percentile(99.9)))
end
EOF
}

# Load settings that scenarios may change: extra request headers (one per line)
# for wrk/h2load, h2load's connections and streams, the ws client's shape.
LOAD_HEADERS=""
H2_CONNS="${H2_CONNS:-8}"
H2_STREAMS="${H2_STREAMS:-8}"
WS_CONNS=1 WS_MSGS=10000 WS_SIZE="${WS_SIZE:-64}"
# benches/openloop.py: requests per second (set by the scenario before each
# case), connections it may open, seconds it waits for answers after sending.
OL_RATE=0
OL_MAX_CONNS="${OL_MAX_CONNS:-1024}"
OL_GRACE="${OL_GRACE:-3}"
# The open-loop generator runs at real-time priority (SCHED_FIFO 10) where
# that is allowed: on a 2-core machine it shares with the worker and the
# front, its own scheduling delays otherwise add milliseconds to every
# latency it measures (its send lag p99 was 4 ms at 3x capacity, 0.9 ms with
# it). The same for every front. OL_RT=0: normal priority.
OL_PRIO=()
if [[ "${OL_RT:-1}" == 1 ]] && chrt -f 10 true 2>/dev/null; then OL_PRIO=(chrt -f 10); fi
# RUN_HOOK: the name of a function a scenario may set, called as
# `$RUN_HOOK pre|post FRONT CASE REP` around every load run (not timed).
RUN_HOOK=""

# client_cmd FRONT DUR OUTDIR: the load command into the CMD array.
client_cmd() {
    local front="$1" dur="$2" dir="$3" secs h
    secs="$(dur_s "$dur")"
    local -a hdr=()
    while IFS= read -r h; do [[ -n "$h" ]] && hdr+=(-H "$h"); done <<<"$LOAD_HEADERS"
    case "${F_CLIENT[$front]}" in
    wrk)
        CMD=(timeout -k 5 $((secs + 30)) wrk -t"$WRK_THREADS" -c"$CONNS" -d"$dur" --timeout 5s
            --latency -s "$WRK_LUA" "${F_URL[$front]}") ;;
    h2c | h1)
        local -a mode=(-c "$H2_CONNS" -m "$H2_STREAMS")
        [[ "${F_CLIENT[$front]}" == h1 ]] && mode=(--h1 -c "$CONNS" -m 1)
        CMD=(timeout -k 5 $((secs + 30)) h2load -t 1 "${mode[@]}" -D "$secs"
            "${hdr[@]}" --log-file "$dir/h2load.log" "${F_URL[$front]}") ;;
    openloop)
        # http://HOST:PORT/PATH; the rate is the scenario's OL_RATE.
        local hp="${F_URL[$front]#http://}"
        local host="${hp%%:*}" rest="${hp#*:}"
        CMD=(timeout -k 5 $((secs + ${OL_GRACE%.*} + 60)) "${OL_PRIO[@]}" "$PYVENV/bin/python" "$BENCH_DIR/openloop.py"
            --host "$host" --port "${rest%%/*}" --path "/${rest#*/}" --rate "$OL_RATE" --duration "$secs"
            --max-conns "$OL_MAX_CONNS" --grace "$OL_GRACE" "${hdr[@]}") ;;
    ws)
        CMD=(timeout -k 5 $((secs * 10 + 60)) "$PYVENV/bin/python" "$BENCH_DIR/ws_client.py"
            --url "${F_URL[$front]}" --conns "$WS_CONNS" --messages "$WS_MSGS" --size "$WS_SIZE"
            --timeout $((secs * 10 + 30))) ;;
    *) die "front $front: unknown client ${F_CLIENT[$front]}" ;;
    esac
}

# run_one CASE FRONT REP DURATION: one load run; REP "warmup" is not recorded.
# Appends a row to $RAW (see benches/report.py for the columns).
run_one() {
    local case="$1" front="$2" rep="$3" dur="$4" dir out f0 f1 w0 w1 c0 c1 spid rss_end rss_w rss_peak
    local -a fp wp
    read -r -a fp <<<"${F_PIDS[$front]}"
    read -r -a wp <<<"${F_WORKER[$front]}"
    dir="$TMP/runs/$case-$front-$rep"
    mkdir -p "$dir"
    out="$dir/client.out"
    client_cmd "$front" "$dur" "$dir"
    [[ -n "$RUN_HOOK" ]] && "$RUN_HOOK" pre "$front" "$case" "$rep"
    # A gate front: its own sheds (503 without reaching the worker) and its
    # adaptive limit, from its admin /metrics.
    local admin="" p shed0="" lpid=""
    for p in "${fp[@]}"; do [[ -n "${GATE_ADMIN[$p]:-}" ]] && admin="${GATE_ADMIN[$p]}"; done
    if [[ -n "$admin" ]]; then
        gate_metric "$admin" asgi_gate_upstream_shed_total 2>/dev/null; shed0="$REPLY"
        limit_sampler "$dir/limits" "$admin" &
        lpid=$!
        PIDS+=("$lpid")
    fi
    local -a rss_pids=("${fp[@]}")
    ((${#rss_pids[@]})) || rss_pids=("${wp[@]}")
    rss_sampler "$dir/rss_peak" "${rss_pids[@]}" &
    spid=$!
    PIDS+=("$spid")
    cpu_ticks "${fp[@]}"; f0="$REPLY"
    cpu_ticks "${wp[@]}"; w0="$REPLY"
    self_child_ticks; c0="$REPLY"
    local rc=0
    WRK_HEADERS="$LOAD_HEADERS" "${CMD[@]}" >"$out" 2>&1 || rc=$?
    self_child_ticks; c1="$REPLY"
    cpu_ticks "${fp[@]}"; f1="$REPLY"
    cpu_ticks "${wp[@]}"; w1="$REPLY"
    rss_kb "${rss_pids[@]}"; rss_end="$REPLY"
    rss_kb "${wp[@]}"; rss_w="$REPLY"
    kill_wait "$spid"
    forget_pid "$spid"
    local sheds=-1 limits=-
    if [[ -n "$lpid" ]]; then
        kill_wait "$lpid"
        forget_pid "$lpid"
        gate_metric "$admin" asgi_gate_upstream_shed_total 2>/dev/null
        # No sample before the first shed: count from 0.
        [[ -n "$REPLY" ]] && sheds=$((REPLY - ${shed0:-0}))
        [[ -s "$dir/limits" ]] && limits="$(sort -n "$dir/limits" | awk '{v[NR] = $1} END {print v[1] "/" v[int((NR + 1) / 2)] "/" v[NR]}')"
    fi
    rss_peak="$(cat "$dir/rss_peak" 2>/dev/null || echo "$rss_end")"
    ((rss_end > rss_peak)) && rss_peak="$rss_end"
    local parsed
    if ! parsed="$(python3 "$BENCH_DIR/parse_client.py" "${F_CLIENT[$front]}" "$out" "$dir/h2load.log")"; then
        log "$front ($case, rep $rep): client exit $rc, no result; its output:"
        tail -n 20 "$out" >&2
        parsed="0 0 0 0 1 0 -1"
    fi
    [[ -n "$RUN_HOOK" ]] && "$RUN_HOOK" post "$front" "$case" "$rep"
    # requests duration_s p50_ms p99_ms socket_errors non2xx p999_ms
    local -a r
    read -r -a r <<<"$parsed"
    ((rc != 0 && r[4] == 0)) && r[4]=1 # a client that failed is never a clean run
    [[ "$rep" == warmup ]] && return 0
    local expect="${F_EXPECT[$front]}" bad expected
    if [[ "${F_CLIENT[$front]}" == openloop ]]; then
        # Sheds are a result here, not a fault: non-2xx answers go to the
        # "expected" column and the whole record to the open-loop table.
        bad=0 expected="${r[5]}"
        local j
        j="$(grep -m1 '^RESULT ' "$out" | cut -c8-)"
        [[ -n "$j" ]] && printf '%s\t%s\t%s\t%s\n' "$case" "$front" "$rep" "$j" >>"$TMP/$SCENARIO.openloop"
    elif [[ "$expect" == 2xx ]]; then
        bad="${r[5]}" expected=0
    else
        bad=$((r[0] - r[5])) expected="${r[5]}" # answers that were not rejections
        # wrk counts every status >= 400 alike: check the exact code by hand.
        local code h
        local -a ch=()
        for h in "${LOAD_HEADERS_CURL[@]}"; do ch+=(-H "$h"); done
        code="$(curl -s -o /dev/null -w '%{http_code}' "${ch[@]}" "${F_URL[$front]}")"
        [[ "$code" == "$expect" ]] || { log "$front: expected $expect, a check request got $code"; bad=$((bad + 1)); }
    fi
    printf '%s\n' "$SCENARIO"$'\t'"$case"$'\t'"$front"$'\t'"$rep"$'\t'"${r[0]}"$'\t'"${r[1]}"$'\t'"${r[2]}"$'\t'"${r[3]}"$'\t'"${r[4]}"$'\t'"$bad"$'\t'"$expected"$'\t'"$((c1 - c0))"$'\t'"$((f1 - f0))"$'\t'"$((w1 - w0))"$'\t'"$rss_end"$'\t'"$rss_peak"$'\t'"$rss_w"$'\t'"${#fp[@]}"$'\t'"${r[6]:--1}"$'\t'"$sheds"$'\t'"$limits" >>"$RAW"
    local gate_info=""
    ((sheds >= 0)) && gate_info=", gate sheds $sheds, limit min/median/max $limits"
    log "$(printf '%-10s %-9s rep %s: %s '"${UNIT:-requests}"' in %ss, socket errors %s, unexpected status %s, front RSS %s MiB%s' \
        "$front" "$case" "$rep" "${r[0]}" "${r[1]}" "${r[4]}" "$bad" $((rss_peak / 1024)) "$gate_info")"
}
LOAD_HEADERS_CURL=()

# measure CASE FRONT...: warm-up each front, then REPS rounds in rotated order.
measure() {
    local case="$1" rep front
    shift
    local -a order=("$@")
    ((${#order[@]})) || { log "$case: no front to measure"; return 0; }
    if [[ "$WARMUP" != 0 && "$WARMUP" != 0s ]]; then
        for front in "${order[@]}"; do run_one "$case" "$front" warmup "$WARMUP"; done
    fi
    for ((rep = 1; rep <= REPS; rep++)); do
        for front in "${order[@]}"; do
            sleep 1
            run_one "$case" "$front" "$rep" "$DURATION"
        done
        order=("${order[@]:1}" "${order[0]}") # no front always goes first
    done
}
set_headers() {
    LOAD_HEADERS="$(printf '%s\n' "$@")"
    LOAD_HEADERS_CURL=("$@")
}

# --- JWT --------------------------------------------------------------------------
# bench_jwts: a fresh HS256 secret in JWT_SECRET (exported: the gate's
# secret_env and the stack read it), a token it signs in JWT_TOKEN and one
# signed with another key in BAD_JWT_TOKEN.
bench_jwts() {
    JWT_SECRET="bench-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    export JWT_SECRET
    JWT_TOKEN="$(mint_jwt "$JWT_SECRET")"
    BAD_JWT_TOKEN="$(mint_jwt "not-the-$JWT_SECRET")"
}

# mint_jwt SECRET: HS256, sub "bench", scope "api", exp a year ahead.
mint_jwt() {
    "$PYVENV/bin/python" - "$1" <<'PY'
import sys, time, jwt
print(jwt.encode({"sub": "bench", "scope": "api", "iat": int(time.time()),
                  "exp": int(time.time()) + 365 * 86400}, sys.argv[1], algorithm="HS256"))
PY
}

# --- reporting --------------------------------------------------------------------
machine_meta() {
    META_CPU="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    META_MACHINE="$(nproc) CPUs, ${META_CPU:-unknown}"
    META_DATE="$(date -u '+%Y-%m-%d %H:%M UTC')"
    META_COMMIT="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo uncommitted)"
    if [[ "$META_COMMIT" != uncommitted && -n "$(git -C "$REPO" status --porcelain 2>/dev/null)" ]]; then
        META_COMMIT="$META_COMMIT (with uncommitted changes)"
    fi
}
