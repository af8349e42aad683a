#!/usr/bin/env bash
# Creates <repo>/.venv with integration-tests/requirements.txt installed.
# Idempotent: a stamp holding the hash of the requirements and the interpreter
# makes a second run a no-op. PYTHON=... picks another interpreter.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
REQ="$REPO/integration-tests/requirements.txt"
STAMP="$VENV/.requirements.sha256"
PY="${PYTHON:-python3}"

command -v "$PY" >/dev/null || { echo "setup-python: $PY not found" >&2; exit 1; }

want="$({ cat "$REQ"; "$PY" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] \
    && "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    echo "setup-python: $VENV up to date"
    exit 0
fi

# Debian's python3 ships venv without ensurepip unless python3-venv is installed.
if ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
    if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "setup-python: installing python3-venv"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq python3-venv >/dev/null
    else
        echo "setup-python: $PY lacks venv/ensurepip; install python3-venv" >&2
        exit 1
    fi
fi

echo "setup-python: creating $VENV"
rm -rf "$VENV"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ"
echo "$want" >"$STAMP"
echo "setup-python: installed $(wc -l < <(grep -E '^[A-Za-z]' "$REQ")) pinned packages into $VENV"
