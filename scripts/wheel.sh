#!/usr/bin/env bash
# Builds the `asgi-gate` binary wheel (pyproject.toml) with maturin and zig
# from PyPI, for manylinux2014 (manylinux_2_17: glibc 2.17 or newer), as ruff
# and uv ship theirs: zig's C compiler and linker target that glibc, so the
# wheel installs on old distributions too. One release build, in
# ${CARGO_TARGET_DIR:-target}. Prints `wheel: PATH`, `tag: TAG` and
# `size: SIZE` last. OUT=DIR puts the wheel there (default: <target>/wheels,
# emptied of older asgi-gate wheels first).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
OUT="${OUT:-$TARGET/wheels}"
PY="${PYTHON:-python3}"
# Pinned, so every machine builds the same wheel.
PINS=("maturin==1.16.0" "ziglang==0.17.1")
COMPAT="manylinux2014"

# maturin and zig live in a venv of their own under the target dir, never in
# the project's .venv; delete it at will. Its path stays the same from run to
# run because the zig wrapper maturin hands cargo names it: a new path would
# change the linker flags and rebuild every crate.
TOOLS="$TARGET/wheel-tools"
want="$({ printf '%s\n' "${PINS[@]}"; "$PY" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
if [[ ! -x "$TOOLS/bin/maturin" || "$(cat "$TOOLS/.pins" 2>/dev/null)" != "$want" ]]; then
    echo "== ${PINS[*]} into $TOOLS"
    rm -rf "$TOOLS"
    "$PY" -m venv "$TOOLS"
    "$TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check "${PINS[@]}"
    echo "$want" >"$TOOLS/.pins"
fi

mkdir -p "$OUT"
rm -f "$OUT"/asgi_gate-*.whl
# maturin finds zig through the venv's python (`python -m ziglang`).
PATH="$TOOLS/bin:$PATH" VIRTUAL_ENV="$TOOLS" \
    maturin build --release --locked --zig --compatibility "$COMPAT" --out "$OUT"

shopt -s nullglob
wheels=("$OUT"/asgi_gate-*.whl)
if ((${#wheels[@]} != 1)); then
    echo "wheel.sh: expected one asgi_gate-*.whl in $OUT, found ${#wheels[@]}" >&2
    exit 1
fi
whl="${wheels[0]}"
# The tag as the file name carries it: {python}-{abi}-{platform}.
tag="$(basename "$whl" .whl | cut -d- -f3-)"
echo "wheel: $whl"
echo "tag: $tag"
echo "size: $(du -h "$whl" | cut -f1)"
