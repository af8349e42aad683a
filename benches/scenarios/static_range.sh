# shellcheck shell=bash disable=SC2034 # TITLE, LOAD_DESC, *_PID...: read by run.sh and common.sh
# static_range: a 50 MiB file fetched in 1 MiB ranges (`Range: bytes=a-b`,
# each request the next MiB, wrapping), as a download manager or a video
# player asks, from the gate's static route and from nginx's static location,
# no worker involved. After the warm-up the file is in the page cache: this
# measures the front's cost per 206, not the disk. nginx has `sendfile on`
# (Debian's default nginx.conf; NGINX_SENDFILE=off to compare copy to copy):
# the gate reads into userspace and writes, as hyper must.
STATIC_RANGE_MIB="${STATIC_RANGE_MIB:-50}"
STATIC_RANGE_STEP="${STATIC_RANGE_STEP:-1048576}"
NGINX_SENDFILE="${NGINX_SENDFILE:-on}"
scenario_static_range() {
    local dir="$TMP/static_range/files" total=$((STATIC_RANGE_MIB * 1048576))
    TITLE="$STATIC_RANGE_MIB MiB file in $((STATIC_RANGE_STEP / 1024)) KiB ranges: asgi-gate static route vs nginx"
    LOAD_DESC="wrk -t$WRK_THREADS -c$CONNS -d$DURATION --latency http://127.0.0.1:PORT/files/big.bin, each request with the next Range: bytes=a-(a+$STATIC_RANGE_STEP-1) of the file, loopback"
    DESC+=("every answer must be 2xx, and one request by hand per front must be a 206 with Content-Range; the uvicorn worker idles (nginx's start-up check and the gate's upstream need one)")
    mkdir -p "$dir"
    head -c "$total" /dev/urandom >"$dir/big.bin"
    start_uvicorn_uds app "$SOCK"
    local uds="$REPLY" url
    local -a fronts=()
    if want gate; then
        gate_yaml "$TMP/static_range/gate.yaml" "$GATE_PORT" "$ADMIN_PORT" "" "  - path: /files/{*path}
    static: { dir: \"$dir\" }
  - path: /{*rest}
    upstream: app
  - path: /
    upstream: app"
        if try_gate gate "$GATE_PORT" "$TMP/static_range/gate.yaml"; then
            url="http://127.0.0.1:$GATE_PORT/files/big.bin"
            add_front gate wrk "$url" 2xx "$REPLY" "" "asgi-gate, threads: 1, a static route (64 KiB reads from the file at the range's offset)"
            fronts+=(gate)
        fi
    fi
    if want nginx; then
        start_nginx "$SOCK" "    sendfile $NGINX_SENDFILE;" "        location /files/ { alias $dir/; }"
        NGINX_PID="$REPLY"
        add_front nginx wrk "http://127.0.0.1:$NGINX_PORT/files/big.bin" 2xx "$(nginx_pids)" "" "nginx, 1 worker, \`location /files/ { alias ...; }\`, sendfile $NGINX_SENDFILE"
        fronts+=(nginx)
    fi
    local f
    for f in "${fronts[@]}"; do
        expect_answer "$f" "${F_URL[$f]}" 206 "content-range: bytes 0-$((STATIC_RANGE_STEP - 1))/$total" -H "Range: bytes=0-$((STATIC_RANGE_STEP - 1))" || true
    done
    # report.lua walks the file with it (see write_wrk_lua in lib.sh).
    export WRK_RANGE="$STATIC_RANGE_STEP $total"
    measure - "${fronts[@]}"
    unset WRK_RANGE
    RATIOS+=("-|gate|nginx|rps|||gate / nginx req/s"
        "-|gate|nginx|front_us|||gate / nginx front CPU per request")
}
