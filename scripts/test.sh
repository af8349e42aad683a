#!/usr/bin/env bash
# The one command that runs every test: the Debian packages the tests use,
# the Python venvs (the app's, and the deploy tools' .venv-deploy), the debug
# gate binary the integration tests start, the wheel (scripts/wheel.sh), then
# the whole workspace's tests. Extra arguments go to `cargo test`. Exits with
# cargo test's status.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

bash scripts/system-packages.sh
bash scripts/setup-python.sh
bash scripts/setup-deploy-tools.sh
cargo build -p asgi-gate

export ASGI_GATE_VENV="$REPO/.venv"
export ASGI_GATE_DEPLOY_VENV="$REPO/.venv-deploy"
export ASGI_GATE_BIN="${CARGO_TARGET_DIR:-$REPO/target}/debug/asgi-gate"
# The wheel users install, built once (the run's one release build);
# packaging.rs installs it into a fresh venv. With arguments (a subset of
# tests) it is not built up front: packaging.rs builds it if it runs.
if [[ $# -eq 0 && -z "${ASGI_GATE_WHEEL:-}" ]]; then
    wheel_log="$(mktemp)"
    bash scripts/wheel.sh | tee "$wheel_log"
    ASGI_GATE_WHEEL="$(sed -n 's/^wheel: //p' "$wheel_log")"
    rm -f "$wheel_log"
    export ASGI_GATE_WHEEL
fi
# The differential path test first, with its output shown: it prints how
# many paths it sent and how many routes disagreed (docs/headers.md, "What
# the worker receives").
if [[ $# -eq 0 ]]; then
    cargo test -p integration-tests --test integrity differential -- --nocapture
fi
exec cargo test --workspace "$@"
