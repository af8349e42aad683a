#!/usr/bin/env bash
# Load bench: GET /hello through asgi-gate, through nginx, and straight to
# uvicorn, on loopback — now the `hello` scenario of benches/run.sh (same
# settings: REPS, DURATION, CONNS, WRK_THREADS, WARMUP, FRONTS, OUT_DIR,
# GATE_BIN, ports; see run.sh). Writes benches/results/hello.{csv,md}.
exec bash "$(dirname "${BASH_SOURCE[0]}")/run.sh" hello
