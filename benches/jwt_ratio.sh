#!/usr/bin/env bash
# JWT verification: asgi-gate (criterion, benches/benches/jwt.rs) against
# PyJWT's jwt.decode (benches/pyjwt_bench.py), same keys, same claims, one run.
# The ratio compares like with like: the gate's cold path (token cache off)
# against PyJWT, which has no cache; the cached figures are shown for context.
#
#   bash benches/jwt_ratio.sh          # about 1 minute after the build
#
# Env: PYTHON (.venv/bin/python, needs PyJWT + cryptography), PY_SECONDS (1.0,
# per repeat per algorithm), OUT (benches/results/jwt.md).
# Targets (issue 4): HS256 >= 10x PyJWT, RS256 and ES256 >= 3x.
set -euo pipefail
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
PY_SECONDS="${PY_SECONDS:-1.0}"
OUT="${OUT:-$BENCH_DIR/results/jwt.md}"
ALGS=(HS256 RS256 ES256 EdDSA)

cd "$REPO"
# A private criterion home: no figure read back from an earlier run.
CRITERION_HOME="$(mktemp -d)"
export CRITERION_HOME
trap 'rm -rf "$CRITERION_HOME"' EXIT

echo "[jwt_ratio] cargo bench (criterion) ..." >&2
cargo bench -q -p asgi-gate-benches --bench jwt >&2
echo "[jwt_ratio] PyJWT ..." >&2
py_json="$("$PYTHON" "$BENCH_DIR/pyjwt_bench.py" --json --seconds "$PY_SECONDS")"
py_version="$("$PYTHON" -c 'import jwt, cryptography; print(f"PyJWT {jwt.__version__}, cryptography {cryptography.__version__}")')"

# Criterion's median (ns) of GROUP/ALG, in µs.
median_us() {
    "$PYTHON" -c 'import json, sys
print(json.load(open(sys.argv[1]))["median"]["point_estimate"] / 1000)' \
        "$CRITERION_HOME/$1/$2/new/estimates.json"
}
py_us() { "$PYTHON" -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$py_json" "$1"; }

cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
git diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"
mkdir -p "$(dirname "$OUT")"
{
    echo "# JWT verification: asgi-gate vs PyJWT"
    echo
    echo "- machine: $(nproc) CPUs, ${cpu:-unknown}, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end"
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- commit: $commit"
    echo "- command: \`PY_SECONDS=$PY_SECONDS bash benches/jwt_ratio.sh\`"
    echo "- gate: criterion median of \`jwt::Policy::verify\` (benches/benches/jwt.rs); cold = token cache off (signature, exp, iss, aud), cached = a token already verified"
    echo "- PyJWT: median of 5 repeats of \`jwt.decode\` with algorithms, audience, issuer and a preloaded key (benches/pyjwt_bench.py); $py_version"
    echo "- keys: filters/tests/fixtures (RSA 2048, P-256, Ed25519; a 39-byte HS256 secret); same claims both sides"
    echo
    echo "| alg | gate cold µs | PyJWT µs | PyJWT / gate cold | target | met | gate cached µs |"
    echo "| --- | --- | --- | --- | --- | --- | --- |"
    for alg in "${ALGS[@]}"; do
        cold="$(median_us jwt_cold "$alg")"
        cached="$(median_us jwt_cached "$alg")"
        py="$(py_us "$alg")"
        case "$alg" in HS256) target=10 ;; RS256 | ES256) target=3 ;; *) target= ;; esac
        "$PYTHON" -c 'import sys
alg, cold, py, target, cached = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], float(sys.argv[5])
ratio = py / cold
met = ("yes" if ratio >= float(target) else "NO") if target else "—"
want = ">= " + target + "×" if target else "—"
print(f"| {alg} | {cold:.2f} | {py:.2f} | {ratio:.1f}× | {want} | {met} | {cached:.3f} |")' \
            "$alg" "$cold" "$py" "$target" "$cached"
    done
} >"$OUT"
cat "$OUT"
