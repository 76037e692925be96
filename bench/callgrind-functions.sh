#!/usr/bin/env bash
# Where the instructions go: callgrind's self cost per function, per request, baton
# against plain hyper-util (the same servers as bench/callgrind.sh), the difference of
# two runs (N1 and N2 requests) divided by N2 - N1, the largest differences first.
#
# Usage: bash bench/callgrind-functions.sh   (MODE=keep-alive|new-conn, N1, N2, TOP=30)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${MODE:-keep-alive}; n1=${N1:-5000}; n2=${N2:-25000}; top=${TOP:-30}
command -v valgrind >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind; }
cargo build --release -p baton-bench >&2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
source bench/callgrind-lib.sh  # from the repository root (cd above)
profile() { # SIDE N -> $tmp/SIDE.N.txt
  cg_profile "$1" "$2" "$mode" "$tmp/$1.$2.out"
  callgrind_annotate --auto=no --inclusive=no --threshold=100 "$tmp/$1.$2.out" > "$tmp/$1.$2.txt" 2>/dev/null
}
for side in plain baton; do profile "$side" "$n1"; profile "$side" "$n2"; done
python3 - "$tmp" "$n1" "$n2" "$top" <<'PY'
import re, sys
tmp, n1, n2, top = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def load(path):
    d = {}
    for line in open(path):
        m = re.match(r'\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)$', line)
        if m and 'PROGRAM TOTALS' not in line:
            name = re.sub(r'\s*\[[^\]]*\]\s*$', '', m.group(2)).strip()
            name = name.split(':', 1)[-1] if name.startswith(('/', '.')) else name
            d[name] = d.get(name, 0) + int(m.group(1).replace(',', ''))
    return d
per = {}
for side in ('plain', 'baton'):
    a, b = load(f'{tmp}/{side}.{n1}.txt'), load(f'{tmp}/{side}.{n2}.txt')
    per[side] = {k: (b.get(k, 0) - a.get(k, 0)) / (n2 - n1) for k in set(a) | set(b)}
print(f"instructions per request: plain {sum(per['plain'].values()):.0f}, baton {sum(per['baton'].values()):.0f}")
print(f"{'baton-plain':>11} {'plain':>9} {'baton':>9}  function")
rows = sorted(set(per['plain']) | set(per['baton']),
              key=lambda k: -abs(per['baton'].get(k, 0) - per['plain'].get(k, 0)))
for k in rows[:top]:
    p, b = per['plain'].get(k, 0), per['baton'].get(k, 0)
    print(f'{b - p:+11.1f} {p:9.1f} {b:9.1f}  {k[:140]}')
PY
