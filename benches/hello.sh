#!/usr/bin/env bash
# Load bench: GET /hello through asgi-gate, through nginx, and straight to
# uvicorn, on loopback. One uvicorn worker on a Unix socket serves both proxies;
# a second one on TCP is "direct". Runs alternate between fronts (order rotated
# each rep) so drift hits all fronts alike. Writes benches/results/hello.{csv,md}.
#
# Env: REPS (3), DURATION (10s), CONNS (64), WRK_THREADS (1), WARMUP (2s; 0 = none),
#      FRONTS ("gate nginx direct"), OUT_DIR (benches/results),
#      GATE_BIN (default: build target/release/asgi-gate; set it to skip the build),
#      GATE_PORT (18080), NGINX_PORT (18081), DIRECT_PORT (18082), ADMIN_PORT (18901)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

REPS="${REPS:-3}"
DURATION="${DURATION:-10s}"
CONNS="${CONNS:-64}"
WRK_THREADS="${WRK_THREADS:-1}"
WARMUP="${WARMUP:-2s}"
FRONTS="${FRONTS:-gate nginx direct}"
OUT_DIR="${OUT_DIR:-$REPO/benches/results}"
GATE_PORT="${GATE_PORT:-18080}"
NGINX_PORT="${NGINX_PORT:-18081}"
DIRECT_PORT="${DIRECT_PORT:-18082}"
ADMIN_PORT="${ADMIN_PORT:-18901}"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
COMMAND="REPS=$REPS DURATION=$DURATION CONNS=$CONNS WRK_THREADS=$WRK_THREADS WARMUP=$WARMUP FRONTS=\"$FRONTS\" bash benches/hello.sh"
BUILD_GATE=1
[[ -n "${GATE_BIN:-}" ]] && BUILD_GATE=0 && COMMAND="GATE_BIN=$GATE_BIN $COMMAND"
GATE_BIN="${GATE_BIN:-$TARGET_DIR/release/asgi-gate}"

log() { printf '[hello.sh] %s\n' "$*" >&2; }
has_front() { [[ " $FRONTS " == *" $1 "* ]]; }
for f in $FRONTS; do
    case "$f" in gate | nginx | direct) ;; *) log "unknown front '$f'"; exit 2 ;; esac
done

# --- tools ------------------------------------------------------------------
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
if has_front nginx && ! command -v nginx >/dev/null && [[ ! -x /usr/sbin/nginx ]]; then
    missing+=(nginx-light)
fi
if ((${#missing[@]})); then
    [[ $EUID -eq 0 ]] || { log "missing ${missing[*]}; install them or run as root"; exit 1; }
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

if has_front gate && ((BUILD_GATE)); then
    log "cargo build --release -p asgi-gate"
    cargo build --release -p asgi-gate
fi
bash scripts/setup-python.sh >&2

# --- processes ----------------------------------------------------------------
TMP="$(mktemp -d -t asgi-gate-bench.XXXXXX)"
SOCK="$TMP/app.sock"
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

# wait_http PID URL [curl args...]: until URL answers the hello body, or PID dies.
wait_http() {
    local pid="$1" url="$2"
    shift 2
    for _ in $(seq 150); do
        kill -0 "$pid" 2>/dev/null || return 1
        [[ "$(curl -sf "$@" "$url" 2>/dev/null)" == '{"message":"hello"}' ]] && return 0
        sleep 0.1
    done
    return 1
}
die_with_log() { log "$1 failed to start; its log:"; cat "$2" >&2; exit 1; }

UVICORN=("$REPO/.venv/bin/uvicorn" app:app --app-dir integration-tests/app
    --no-access-log --log-level warning)

# Over a Unix socket uvicorn sees no peer address, so only '*' lets it believe
# the proxy's X-Forwarded-For (as a real deployment would run it).
"${UVICORN[@]}" --uds "$SOCK" --proxy-headers --forwarded-allow-ips '*' >"$TMP/uvicorn-uds.log" 2>&1 &
UDS_PID=$!
PIDS+=("$UDS_PID")
wait_http "$UDS_PID" http://localhost/hello --unix-socket "$SOCK" || die_with_log "uvicorn (uds)" "$TMP/uvicorn-uds.log"

if has_front direct; then
    "${UVICORN[@]}" --host 127.0.0.1 --port "$DIRECT_PORT" >"$TMP/uvicorn-tcp.log" 2>&1 &
    DIRECT_PID=$!
    PIDS+=("$DIRECT_PID")
    wait_http "$DIRECT_PID" "http://127.0.0.1:$DIRECT_PORT/hello" || die_with_log "uvicorn (tcp)" "$TMP/uvicorn-tcp.log"
fi

if has_front nginx; then
    mkdir -p "$TMP/nginx"
    # Running as root, nginx would drop its worker to nobody, which cannot reach
    # the socket in our private temp dir: keep it as the current user.
    user_line=""
    [[ $EUID -eq 0 ]] && user_line="user $(id -un) $(id -gn);"
    cat >"$TMP/nginx/nginx.conf" <<EOF
$user_line
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/client_body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    # Default 1000 requests per connection would make nginx alone reconnect
    # during a run; the gate has no such cap.
    keepalive_requests 1000000;
    upstream app {
        server unix:$SOCK;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
EOF
    "$NGINX" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/error.log" -t -q \
        || die_with_log "nginx -t" "$TMP/nginx/error.log"
    "$NGINX" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/error.log" >"$TMP/nginx/stdout.log" 2>&1 &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
    wait_http "$NGINX_PID" "http://127.0.0.1:$NGINX_PORT/hello" || die_with_log nginx "$TMP/nginx/error.log"
fi

if has_front gate; then
    cat >"$TMP/gate.yaml" <<EOF
threads: 1
listen:
  - address: 127.0.0.1:$GATE_PORT
admin:
  address: 127.0.0.1:$ADMIN_PORT
upstreams:
  app:
    sockets: [$SOCK]
    pool: { max_idle: 64, max_connections: 256, idle_timeout: 4s }
routes:
  - path: /{*rest}
    upstream: app
  - path: /
    upstream: app
EOF
    "$GATE_BIN" -c "$TMP/gate.yaml" >"$TMP/gate.log" 2>&1 &
    GATE_PID=$!
    PIDS+=("$GATE_PID")
    wait_http "$GATE_PID" "http://127.0.0.1:$GATE_PORT/hello" || die_with_log asgi-gate "$TMP/gate.log"
fi

# --- measuring ----------------------------------------------------------------
CLK_TCK="$(getconf CLK_TCK)"

# Sum of utime+stime (clock ticks) of the given PIDs, all their threads included.
cpu_ticks() {
    local sum=0 pid s
    local -a f
    for pid in "$@"; do
        s="$(<"/proc/$pid/stat")"
        s="${s##*) }" # fields after "(comm)": state is f[0], utime f[11], stime f[12]
        read -r -a f <<<"$s"
        sum=$((sum + f[11] + f[12]))
    done
    echo "$sum"
}

children_of() {
    local parent="$1" st s
    local -a f
    for st in /proc/[0-9]*/stat; do
        { s="$(<"$st")"; } 2>/dev/null || continue # processes come and go
        s="${s##*) }"
        read -r -a f <<<"$s"
        [[ "${f[1]}" == "$parent" ]] && echo "${st//[^0-9]/}"
    done
    return 0
}

# The front's processes: nginx is its master plus its worker.
front_pids() {
    case "$1" in
    gate) echo "$GATE_PID" ;;
    # shellcheck disable=SC2046
    nginx) echo "$NGINX_PID" $(children_of "$NGINX_PID") ;;
    direct) echo "$DIRECT_PID" ;;
    esac
}
front_port() {
    case "$1" in gate) echo "$GATE_PORT" ;; nginx) echo "$NGINX_PORT" ;; direct) echo "$DIRECT_PORT" ;; esac
}
worker_pid() { if [[ "$1" == direct ]]; then echo "$DIRECT_PID"; else echo "$UDS_PID"; fi; }

cat >"$TMP/report.lua" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.timeout, e.status))
end
EOF

RAW="$TMP/raw.tsv"
: >"$RAW"
mkdir -p "$TMP/wrk"

# run FRONT REP DURATION: one wrk run; REP "warmup" is not recorded.
run() {
    local front="$1" rep="$2" dur="$3" port pids wpid f0 f1 w0 w1 out
    port="$(front_port "$front")"
    # shellcheck disable=SC2207
    pids=($(front_pids "$front"))
    wpid="$(worker_pid "$front")"
    out="$TMP/wrk/$front-$rep.txt"
    f0="$(cpu_ticks "${pids[@]}")"
    w0="$(cpu_ticks "$wpid")"
    wrk -t"$WRK_THREADS" -c"$CONNS" -d"$dur" --latency -s "$TMP/report.lua" \
        "http://127.0.0.1:$port/hello" >"$out" 2>&1 || { log "wrk failed:"; cat "$out" >&2; exit 1; }
    f1="$(cpu_ticks "${pids[@]}")"
    w1="$(cpu_ticks "$wpid")"
    local -a r
    read -r -a r <<<"$(grep '^RESULT ' "$out" | tail -n1)"
    ((${#r[@]} == 10)) || { log "no RESULT line from wrk:"; cat "$out" >&2; exit 1; }
    [[ "$rep" == warmup ]] && return 0
    # front rep requests duration_us p50_us p99_us connect read write timeout status front_ticks worker_ticks
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$front" "$rep" \
        "${r[1]}" "${r[2]}" "${r[3]}" "${r[4]}" "${r[5]}" "${r[6]}" "${r[7]}" "${r[8]}" "${r[9]}" \
        "$((f1 - f0))" "$((w1 - w0))" >>"$RAW"
    log "$(printf '%-6s rep %s: %s requests, status errors %s, socket errors %s' \
        "$front" "$rep" "${r[1]}" "${r[9]}" "$((r[5] + r[6] + r[7] + r[8]))")"
}

read -r -a order <<<"$FRONTS"
if [[ "$WARMUP" != 0 && "$WARMUP" != 0s ]]; then
    for front in "${order[@]}"; do run "$front" warmup "$WARMUP"; done
fi
for ((rep = 1; rep <= REPS; rep++)); do
    for front in "${order[@]}"; do
        sleep 1
        run "$front" "$rep" "$DURATION"
    done
    order=("${order[@]:1}" "${order[0]}") # rotate so no front always goes first
done

# --- report ---------------------------------------------------------------------
commit="$(git rev-parse --short HEAD 2>/dev/null || echo uncommitted)"
if [[ "$commit" != uncommitted && -n "$(git status --porcelain 2>/dev/null)" ]]; then
    commit="$commit (with uncommitted changes)"
fi
mkdir -p "$OUT_DIR"
META_CPU="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
python3 - "$RAW" "$OUT_DIR" "$CLK_TCK" "$(nproc)" "${META_CPU:-unknown}" \
    "$(date -u '+%Y-%m-%d %H:%M UTC')" "$commit" "$COMMAND" "$FRONTS" \
    "$CONNS" "$WRK_THREADS" "$DURATION" <<'PY'
import csv, statistics, sys

raw, out_dir, clk, ncpu, cpu, date, commit, command, fronts, conns, wthreads, dur = sys.argv[1:]
clk = int(clk)
fronts = fronts.split()

runs = []
with open(raw) as f:
    for line in f:
        fr, rep, req, dur_us, p50, p99, con, rd, wr, to, st, fticks, wticks = line.split("\t")
        req, dur_us = int(req), int(dur_us)
        sock = int(con) + int(rd) + int(wr) + int(to)
        runs.append({
            "front": fr, "rep": int(rep), "requests": req,
            "rps": req / (dur_us / 1e6),
            "p50_ms": int(p50) / 1000, "p99_ms": int(p99) / 1000,
            "socket_errors": sock, "status_errors": int(st),
            "valid": req > 0 and sock == 0 and int(st) == 0,
            "front_cpu_us_per_req": int(fticks) / clk * 1e6 / req if req else float("nan"),
            "worker_cpu_us_per_req": int(wticks) / clk * 1e6 / req if req else float("nan"),
        })

METRICS = ["rps", "p99_ms", "front_cpu_us_per_req", "worker_cpu_us_per_req"]
summary = {}
for fr in fronts:
    good = [r for r in runs if r["front"] == fr and r["valid"]]
    s = {"runs": sum(r["front"] == fr for r in runs), "valid": len(good)}
    for m in METRICS:
        vals = [r[m] for r in good]
        s[m] = (statistics.median(vals), min(vals), max(vals)) if vals else None
    summary[fr] = s

def ratio(a, b, m):
    sa, sb = summary.get(a), summary.get(b)
    if not sa or not sb or not sa[m] or not sb[m] or not sb[m][0]:
        return None
    return sa[m][0] / sb[m][0]

PAIRS = [("gate", "direct"), ("gate", "nginx"), ("nginx", "direct")]
fmt = {"rps": "{:.0f}", "p99_ms": "{:.2f}", "front_cpu_us_per_req": "{:.1f}", "worker_cpu_us_per_req": "{:.1f}"}

def cell(s, m):
    if not s[m]:
        return "n/a"
    med, lo, hi = (fmt[m].format(v) for v in s[m])
    return f"{med} ({lo}–{hi})"

meta = [
    ("machine", f"{ncpu} CPUs, {cpu}"),
    ("date", date),
    ("commit", commit),
    ("command", command),
    ("load", f"wrk -t{wthreads} -c{conns} -d{dur} --latency http://127.0.0.1:PORT/hello, loopback"),
]
md = ["# GET /hello: asgi-gate vs nginx vs direct uvicorn", ""]
md += [f"- {k}: `{v}`" if k == "command" else f"- {k}: {v}" for k, v in meta]
md += [
    "- one uvicorn worker (httptools, no access log) on a Unix socket behind gate and nginx;"
    " a second one on TCP for direct. gate `threads: 1`; nginx `worker_processes 1`, upstream keepalive 64.",
    "- medians over valid runs (min–max in brackets); a run with any socket error or non-2xx answer is invalid.",
    "- CPU µs/request from utime+stime in /proc (front = the proxy, all its processes; for direct"
    " the worker itself; worker = the uvicorn process behind it).",
    "",
    "| front | valid runs | requests/s | p99 ms | front CPU µs/req | worker CPU µs/req |",
    "| --- | --- | --- | --- | --- | --- |",
]
for fr in fronts:
    s = summary[fr]
    md.append(f"| {fr} | {s['valid']}/{s['runs']} | " + " | ".join(cell(s, m) for m in METRICS) + " |")
md += ["", "| ratio (medians) | requests/s | p99 | front CPU/req | worker CPU/req |", "| --- | --- | --- | --- | --- |"]
for a, b in PAIRS:
    vals = [ratio(a, b, m) for m in METRICS]
    md.append(f"| {a}/{b} | " + " | ".join("n/a" if v is None else f"{v:.2f}" for v in vals) + " |")
md += ["", "Runs, in the order they ran:", "",
       "| rep | front | requests | requests/s | p50 ms | p99 ms | socket err | non-2xx | front CPU µs/req | worker CPU µs/req | valid |",
       "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
for r in runs:
    md.append(f"| {r['rep']} | {r['front']} | {r['requests']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
              f"{r['socket_errors']} | {r['status_errors']} | {r['front_cpu_us_per_req']:.1f} | "
              f"{r['worker_cpu_us_per_req']:.1f} | {'yes' if r['valid'] else 'NO'} |")
text = "\n".join(md) + "\n"
print(text)
with open(f"{out_dir}/hello.md", "w") as f:
    f.write(text)

COLS = ["record", "front", "rep", "valid", "requests", "rps", "p50_ms", "p99_ms", "socket_errors",
        "status_errors", "front_cpu_us_per_req", "worker_cpu_us_per_req"]
with open(f"{out_dir}/hello.csv", "w", newline="") as f:
    for k, v in meta:
        f.write(f"# {k}: {v}\n")
    w = csv.writer(f)
    w.writerow(COLS)
    r4 = lambda v: "" if v is None else round(v, 4)
    for r in runs:
        w.writerow(["run", r["front"], r["rep"], int(r["valid"]), r["requests"], r4(r["rps"]), r4(r["p50_ms"]),
                    r4(r["p99_ms"]), r["socket_errors"], r["status_errors"],
                    r4(r["front_cpu_us_per_req"]), r4(r["worker_cpu_us_per_req"])])
    for i, stat in enumerate(["median", "min", "max"]):
        for fr in fronts:
            s = summary[fr]
            g = lambda m: r4(s[m][i]) if s[m] else ""
            w.writerow([stat, fr, "", s["valid"], "", g("rps"), "", g("p99_ms"), "", "",
                        g("front_cpu_us_per_req"), g("worker_cpu_us_per_req")])
    for a, b in PAIRS:
        w.writerow(["ratio", f"{a}/{b}", "", "", "", r4(ratio(a, b, "rps")), "", r4(ratio(a, b, "p99_ms")),
                    "", "", r4(ratio(a, b, "front_cpu_us_per_req")), r4(ratio(a, b, "worker_cpu_us_per_req"))])
PY
log "wrote $OUT_DIR/hello.md and $OUT_DIR/hello.csv"
