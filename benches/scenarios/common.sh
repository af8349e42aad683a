# shellcheck shell=bash disable=SC2034 # GATE_OFF_DESC, NGINX_401_LOCATION: read by the scenarios
# Helpers the scenario files share (sourced by benches/run.sh after lib.sh).

# want FRONT: the FRONTS env var (space-separated), when set, limits the fronts.
want() { [[ -z "${FRONTS:-}" || " $FRONTS " == *" $1 "* ]]; }

# gate_yaml FILE PORT ADMIN_PORT [TOP_LEVEL_YAML] [ROUTES_YAML] [POOL]
# [UPSTREAM_EXTRA]: a gate before $SOCK, threads: 1. Default routes: everything
# to the app. UPSTREAM_EXTRA: more keys of upstreams.app, one per line
# (indented here).
gate_yaml() {
    local file="$1" port="$2" admin="$3" top="${4:-}" routes="${5:-}" pool="${6:-}" up_extra="${7:-}"
    [[ -n "$up_extra" ]] && up_extra="    ${up_extra//$'\n'/$'\n'    }"
    [[ -n "$pool" ]] || pool="${GATE_POOL:-}"
    [[ -n "$pool" ]] || pool='{ max_idle: 64, max_connections: 256, idle_timeout: 4s }'
    [[ -n "$routes" ]] || routes='  - path: /{*rest}
    upstream: app
  - path: /
    upstream: app'
    cat >"$file" <<YAML
threads: 1
listen:
  - address: 127.0.0.1:$port
admin:
  address: 127.0.0.1:$admin
upstreams:
  app:
    sockets: [$SOCK]
    pool: $pool
$up_extra
$top
routes:
$routes
YAML
}

# overload_top: the top-level YAML of the overload scenario's gates (gzip at
# GZIP_LEVEL; every connection comes from 127.0.0.1, above the per-IP cap of
# 256), shared with benches/shed_wait.sh, which traces the same gate.
overload_top() {
    REPLY="compression:
  algorithms: [gzip]
  levels: { gzip: $GZIP_LEVEL }
limits:
  max_connections_per_ip: 100000"
}

# The `gate_off` fronts: the same gate with the adaptive concurrency limit off
# (issue 17), i.e. today's static behaviour, only pool.max_connections. The
# only place that says how: the lines it adds under upstreams.app. A build
# from before the limit refuses the key and the front is SKIPPED.
GATE_OFF_UPSTREAM="${GATE_OFF_UPSTREAM:-concurrency: off}"
GATE_OFF_DESC="the same gate with \`$GATE_OFF_UPSTREAM\` in its upstream (the static pool alone, as before issue 17)"

# gate_off_yaml FILE [TOP_LEVEL_YAML] [ROUTES_YAML] [POOL]: gate_yaml on
# GATE2_PORT/ADMIN2_PORT with GATE_OFF_UPSTREAM.
gate_off_yaml() {
    gate_yaml "$1" "$GATE2_PORT" "$ADMIN2_PORT" "${2:-}" "${3:-}" "${4:-}" "$GATE_OFF_UPSTREAM"
}

# gate_401_yaml FILE PORT ADMIN_PORT: a gate with an HS256 policy (secret in
# $JWT_SECRET) on /api/, so a token signed with another key gets its 401.
gate_401_yaml() {
    gate_yaml "$1" "$2" "$3" "auth:
  default:
    algorithms: [HS256]
    secret_env: JWT_SECRET" "  - path: /api/{*rest}
    upstream: app
    auth: default
  - path: /{*rest}
    upstream: app
  - path: /
    upstream: app"
}

# nginx's /api/ when it stands for the gate's 401: `return 401` with the
# gate's JSON body and headers (it checks no token at all).
NGINX_401_LOCATION="        location /api/ {
            default_type application/json;
            add_header WWW-Authenticate 'Bearer realm=\"asgi-gate\", error=\"invalid_token\"' always;
            add_header X-Request-Id \$request_id always;
            add_header Cache-Control no-store always;
            return 401 '{\"error\":\"invalid_token\",\"detail\":\"the token is not valid\"}';
        }"

# try_gate NAME PORT YAML: start it; when this build refuses a section ("not
# supported by this build yet", or `concurrency` as an unknown key), print
# "SKIPPED: gate lacks <sections>", note it and return 1 (the scenario goes on
# without that front).
try_gate() {
    local rc=0
    start_gate "$@" || rc=$?
    if ((rc == 2)); then
        local msg="SKIPPED: gate lacks $SKIP_REASON (front \`$1\` not measured: this build refuses its config)"
        echo "$msg"
        log "$msg"
        NOTES+=("$msg")
        return 1
    fi
    return 0
}

# expect_answer NAME URL WANT_STATUS [GREP_HEADER] [curl args...]: one request
# by hand before the load; a mismatch is noted in the report (not fatal).
expect_answer() {
    local name="$1" url="$2" want_status="$3" want_hdr="$4" out code
    shift 4
    out="$(curl -s -D - -o /dev/null "$@" "$url" || true)"
    code="$(awk 'NR==1 {print $2}' <<<"$out")"
    if [[ "$code" != "$want_status" ]]; then
        NOTES+=("WARNING: $name: $url answered $code, expected $want_status")
        log "WARNING: $name: $url answered $code, expected $want_status"
        return 1
    fi
    if [[ -n "$want_hdr" ]] && ! grep -qi "^$want_hdr" <<<"$out"; then
        NOTES+=("WARNING: $name: $url answered without \`$want_hdr\`")
        log "WARNING: $name: $url answered without '$want_hdr'"
        return 1
    fi
    return 0
}

# nginx_pids: the running nginx ($NGINX_PID), master and worker.
# shellcheck disable=SC2046 # one PID per word
nginx_pids() { echo "$NGINX_PID" $(children_of "$NGINX_PID"); }
# haproxy_pids: the running haproxy ($HAPROXY_PID): one process (-db, nbthread 1).
# shellcheck disable=SC2046 # one PID per word
haproxy_pids() { echo "$HAPROXY_PID" $(children_of "$HAPROXY_PID"); }

# varnish_pids: the running varnishd ($VARNISH_PID): manager and cache process.
# shellcheck disable=SC2046 # one PID per word
varnish_pids() { echo "$VARNISH_PID" $(children_of "$VARNISH_PID"); }

# nginx_cache_http / nginx_cache_location [on]: nginx's proxy_cache for the
# cache scenarios (zone in $TMP/nginx/cache, 256 MiB), a location for
# /cacheable/ set up as the main one plus the cache, `X-Cache` from
# $upstream_cache_status; "on" adds proxy_cache_lock (timeout 10 s).
nginx_cache_http() {
    echo "    proxy_cache_path $TMP/nginx/cache levels=1:2 keys_zone=gate_bench:16m max_size=256m inactive=1h use_temp_path=off;"
}
nginx_cache_location() {
    local lock=""
    [[ "${1:-off}" == on ]] && lock="            proxy_cache_lock on;
            proxy_cache_lock_timeout 10s;"
    cat <<EOF
        location /cacheable/ {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection '';
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Request-Id \$request_id;
            add_header X-Request-Id \$request_id always;
            add_header X-Cache \$upstream_cache_status always;
            proxy_cache gate_bench;
$lock
        }
EOF
}

# haproxy_desc: what every HAProxy row says about itself.
haproxy_desc() {
    echo "HAProxy $(haproxy_version), nbthread 1, \`http-reuse always\` to the socket, no server maxconn (it opens a worker connection per request in flight), sending the worker the headers the gate sends and returning X-Request-Id"
}
