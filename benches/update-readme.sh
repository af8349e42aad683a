#!/usr/bin/env bash
# Rewrites the README's performance section from benches/results/<name>.md, between
# the markers <!-- bench:<name>:start --> and <!-- bench:<name>:end -->. Figures are
# never typed into the README by hand.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
README="$REPO/README.md"
for md in "$REPO"/benches/results/*.md; do
    [[ -f "$md" ]] || continue
    name="$(basename "$md" .md)"
    grep -q "<!-- bench:$name:start -->" "$README" || continue
    python3 - "$README" "$name" "$md" <<'PY'
import sys, pathlib
readme, name, md = sys.argv[1], sys.argv[2], sys.argv[3]
text = pathlib.Path(readme).read_text()
start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
head, rest = text.split(start, 1)
_, tail = rest.split(end, 1)
body = pathlib.Path(md).read_text().strip()
pathlib.Path(readme).write_text(f"{head}{start}\n{body}\n{end}{tail}")
PY
    echo "README: $name section updated from ${md#$REPO/}"
done
