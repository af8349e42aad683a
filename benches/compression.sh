#!/usr/bin/env bash
# Response compression per coding and level (criterion, benches/benches/compression.rs)
# beside Python's zlib at level 9 (what Starlette's GZipMiddleware uses) on the same
# 64 KiB JSON, from one run. Writes benches/results/compression.md.
#
#   bash benches/compression.sh        # about 2 minutes after the build
#
# Env: PYTHON (.venv/bin/python), OUT (benches/results/compression.md).
set -euo pipefail
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
OUT="${OUT:-$BENCH_DIR/results/compression.md}"

cd "$REPO"
CRITERION_HOME="$(mktemp -d)"
export CRITERION_HOME
trap 'rm -rf "$CRITERION_HOME"' EXIT

echo "[compression] cargo bench (criterion) ..." >&2
table="$(cargo bench -q -p asgi-gate-benches --bench compression 2>/dev/null | grep '^|')"

# GZipMiddleware's encoder (gzip.GzipFile, zlib level 9) on the app's /big bytes.
py="$(cd integration-tests/app && "$PYTHON" - <<'PY'
import gzip, io, time, zlib
from app import BIG_BYTES
def gzip9(data):
    buf = io.BytesIO()
    with gzip.GzipFile(mode="wb", compresslevel=9, fileobj=buf, mtime=0) as f:
        f.write(data)
    return buf.getvalue()
out = gzip9(BIG_BYTES)
n, start = 0, time.perf_counter()
while time.perf_counter() - start < 1.0:
    gzip9(BIG_BYTES)
    n += 1
secs = (time.perf_counter() - start) / n
print(f"{len(BIG_BYTES)} {len(out)} {len(BIG_BYTES) / secs / 1048576:.1f} {zlib.ZLIB_RUNTIME_VERSION}")
PY
)"
read -r py_in py_out py_mibs zlib_version <<<"$py"

cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
git diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"
gate_out="$(awk -F'|' '$2 ~ /json64k/ && $3 ~ /^ gzip-6-known-length $/ {gsub(/ /, "", $5); print $5}' <<<"$table")"
mkdir -p "$(dirname "$OUT")"
{
    echo "# Response compression: sizes and speed per coding and level"
    echo
    echo "- machine: $(nproc) CPUs, ${cpu:-unknown}"
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- commit: $commit"
    echo "- command: \`bash benches/compression.sh\` (criterion: \`cargo bench -p asgi-gate-benches --bench compression\`)"
    echo "- inputs: json64k = the integration app's /big (64 KiB JSON), fed in 16 KiB frames; html1m = 1 MiB of generated HTML"
    echo "- \`-known-length\`: the body declares its length (Content-Length ≤ 256 KiB): one pass through libdeflate; without it, streamed through flate2 (miniz_oxide)"
    echo "- MiB/s: input bytes per second of one core"
    echo
    echo "$table"
    echo "| json64k | Python gzip level 9 (GZipMiddleware), zlib $zlib_version | $py_in | $py_out | $("$PYTHON" -c "print(f'{$py_in/$py_out:.2f}')") | $py_mibs |"
    echo
    if [[ -n "$gate_out" ]]; then
        met=NO
        ((gate_out <= py_out)) && met=yes
        echo "The gate's default (gzip 6, known length) on json64k: $gate_out bytes vs GZipMiddleware's $py_out — equal or smaller: $met."
    fi
} >"$OUT"
echo "[compression] wrote ${OUT#$REPO/}" >&2
