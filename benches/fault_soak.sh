#!/usr/bin/env bash
# Fault soak (at most 10 minutes): steady mixed load (GET, POST with a body,
# JWT, WebSockets) through `asgi-gate run --workers 2` while a worker is
# SIGKILLed every 30 s, the config reloaded every 20 s, Redis restarted EMPTY
# every 60 s and slow or silent clients opened every 30 s; a second gate
# sharing Redis must enforce every revocation posted on the first. Writes
# benches/results/fault_soak.{md,csv,png} and the README block. Exits 1 when a
# target is missed: a failure outside the second after a worker kill, or a
# revocation never enforced on the second gate.
#
#   bash benches/fault_soak.sh              # 300 s
#   DURATION=120 bash benches/fault_soak.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SOAK_SECONDS="${DURATION:-300}"
SOAK_SECONDS="${SOAK_SECONDS%s}"
command -v redis-server >/dev/null || die "redis-server (Debian package redis-server) is needed"
ensure_gate
bash "$REPO/scripts/setup-python.sh" >&2
ensure_bench_venv
machine_meta
meta="$(python3 -c 'import json,sys; print(json.dumps(dict(zip(["machine","date","commit","command"], sys.argv[1:]))))' \
    "$META_MACHINE" "$META_DATE" "$META_COMMIT" "DURATION=$SOAK_SECONDS bash benches/fault_soak.sh")"
status=0
timeout $((SOAK_SECONDS + 180)) "$PYVENV/bin/python" "$BENCH_DIR/fault_soak.py" \
    --gate-bin "$GATE_BIN" --venv "$PYVENV" --app-dir "$REPO/integration-tests/app" \
    --duration "$SOAK_SECONDS" --out-dir "$OUT_DIR" --meta "$meta" || status=$?
if [[ -f "$OUT_DIR/fault_soak_events.json" ]]; then
    "$BENCH_DIR/.venv/bin/python" "$BENCH_DIR/fault_soak.py" --plot "$OUT_DIR"
    bash "$BENCH_DIR/update-readme.sh"
fi
exit "$status"
