#!/usr/bin/env bash
# The one command that runs every test: the Debian packages the tests use,
# the Python venvs (the app's, and the deploy tools' .venv-deploy), the debug
# gate binary the integration tests start, then the whole workspace's tests.
# Extra arguments go to `cargo test`. Exits with cargo test's status.
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
# The differential path test first, with its output shown: it prints how
# many paths it sent and how many routes disagreed (README "What the worker
# receives").
if [[ $# -eq 0 ]]; then
    cargo test -p integration-tests --test integrity differential -- --nocapture
fi
exec cargo test --workspace "$@"
