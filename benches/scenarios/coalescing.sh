# shellcheck shell=bash disable=SC2034 # TITLE, SELF_REPORT, *_PID...: read by run.sh and common.sh
# coalescing: COALESCE_N (1000) concurrent requests, each on its own
# connection, for one cold key (/cacheable/slow?ms=COALESCE_MS with a fresh
# query per front and rep) → how many reached the worker (its /count before
# and after). gate (`cache: true`, lock_timeout 10s), nginx (proxy_cache_lock
# on, timeout 10 s), Varnish (its waiting list, on by default) and direct
# uvicorn (no cache: every request, the baseline). Not a throughput run: it
# writes its own benches/results/coalescing.{md,csv}.
COALESCE_N="${COALESCE_N:-1000}"
COALESCE_MS="${COALESCE_MS:-500}"

# hits_of SOCK: the app's /count on that socket.
hits_of() {
    curl -s --unix-socket "$1" http://localhost/count | grep -o '[0-9]\+' | head -n1
}

scenario_coalescing() {
    TITLE="$COALESCE_N concurrent requests for one cold key: requests that reached the worker"
    SELF_REPORT=1
    start_uvicorn_uds app "$SOCK"
    local -A url=()
    if want gate; then
        # 1,000 connections from one address: over the default per-IP cap (256).
        gate_yaml "$TMP/coalescing/gate.yaml" "$GATE_PORT" "$ADMIN_PORT" "cache:
  lock_timeout: 10s
limits:
  max_connections_per_ip: 4096" "  - path: /cacheable/{*rest}
    upstream: app
    cache: true
  - path: /{*rest}
    upstream: app"
        try_gate gate "$GATE_PORT" "$TMP/coalescing/gate.yaml" && url[gate]="http://127.0.0.1:$GATE_PORT"
    fi
    if want nginx; then
        start_nginx "$SOCK" "$(nginx_cache_http)" "$(nginx_cache_location on)"
        NGINX_PID="$REPLY"
        url[nginx]="http://127.0.0.1:$NGINX_PORT"
    fi
    if want varnish; then
        start_varnish "$SOCK"
        VARNISH_PID="$REPLY"
        url[varnish]="http://127.0.0.1:$VARNISH_PORT"
    fi
    # direct: a second uvicorn with its own counter, on its own socket.
    local direct_sock="$TMP/coalescing/direct.sock"
    if want direct; then
        start_uvicorn_uds app "$direct_sock"
        url[direct]="http://localhost"
    fi
    local csv="$OUT_DIR/coalescing.csv" md="$OUT_DIR/coalescing.md" f rep sock before after out ok other ms
    mkdir -p "$OUT_DIR"
    echo "front,rep,requests,ok,other,worker_hits,elapsed_ms" >"$csv"
    for ((rep = 1; rep <= REPS; rep++)); do
        for f in gate nginx varnish direct; do
            [[ -n "${url[$f]:-}" ]] || continue
            sock="$SOCK"
            local -a via=()
            [[ "$f" == direct ]] && sock="$direct_sock" via=(--unix "$direct_sock")
            before="$(hits_of "$sock")"
            out="$(timeout 120 python3 "$BENCH_DIR/burst.py" "${via[@]}" --url "${url[$f]}/cacheable/slow?ms=$COALESCE_MS&k=$f-$rep-$RANDOM" --n "$COALESCE_N")"
            after="$(hits_of "$sock")"
            read -r ok other ms < <(sed 's/ok=\([0-9]*\) other=\([0-9]*\) elapsed_ms=\([0-9]*\)/\1 \2 \3/' <<<"$out")
            echo "$f,$rep,$COALESCE_N,$ok,$other,$((after - before)),$ms" >>"$csv"
            log "coalescing $f rep $rep: $out; reached the worker: $((after - before))"
        done
    done
    {
        echo "# $TITLE"
        echo
        echo "machine: $META_MACHINE; date: $META_DATE; commit: $META_COMMIT"
        echo
        echo "command: \`$COMMAND\`"
        echo
        echo "Each request on its own connection, all sent at once (benches/burst.py); the worker sleeps $COALESCE_MS ms and answers \`Cache-Control: public, max-age=3600\`. gate: \`cache: true\`, lock_timeout 10s, max_connections_per_ip 4096 (the default, 256, would refuse most of one client's 1,000 connections); nginx: proxy_cache with proxy_cache_lock on (timeout 10s); $(varnish_version 2>/dev/null || echo Varnish): built-in VCL, one thread pool; direct: uvicorn with no cache (the baseline)."
        echo
        echo "| front | rep | requests | 2xx | other | reached the worker | elapsed ms |"
        echo "| --- | --- | --- | --- | --- | --- | --- |"
        tail -n +2 "$csv" | while IFS=, read -r f rep n ok other hits ms; do
            echo "| $f | $rep | $n | $ok | $other | $hits | $ms |"
        done
    } >"$md"
}
