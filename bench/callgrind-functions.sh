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
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
profile() { # SIDE N -> $tmp/SIDE.N.txt
  local side=$1 n=$2 p out
  p=$(port); out=$tmp/$side.$n.out
  TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$out" \
    target/release/bench-server "$side" --listen "127.0.0.1:$p" 2>/dev/null &
  local vg=$!
  for _ in $(seq 1 600); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$p),0.2).close()" 2>/dev/null && break
    sleep 0.1
  done
  target/release/baton-bench "http://127.0.0.1:$p/" -n "$n" -c 8 --threads 1 --mode "$mode" --quiet --timeout 30s >/dev/null
  kill -TERM $vg; wait $vg 2>/dev/null || true
  callgrind_annotate --auto=no --inclusive=no --threshold=100 "$out" > "$tmp/$side.$n.txt" 2>/dev/null
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
