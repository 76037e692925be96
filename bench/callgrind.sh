#!/usr/bin/env bash
# Instructions per request of the serving path, counted by callgrind (repeatable,
# whatever else the machine does), the same handler served three ways: plain
# hyper-util as axum::serve does it; plain hyper-util with its own header-read timeout
# (a timer, 30 s), the fair baseline for a server protected against silent clients;
# and baton with its defaults (header-read and idle timeouts, connection limit, TLS
# possible on any listener).
# Each server runs twice under callgrind, serving N1 and then N2 keep-alive requests
# (or new-connection requests with MODE=new-conn); the difference divided by N2 - N1 is
# the cost of one request, with start-up and shutdown cancelled out.
#
# Usage: bash bench/callgrind.sh          (MODE=keep-alive|new-conn, N1=5000, N2=25000)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${MODE:-keep-alive}; n1=${N1:-5000}; n2=${N2:-25000}
command -v valgrind >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind; }
cargo build --release -p baton-bench >&2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

instructions() { # SIDE N -> total instructions of the server process
  local side=$1 n=$2 p out
  p=$(port); out=$tmp/cg.$side.$n
  # One runtime worker: with two, the scheduling under valgrind varies from run to run
  # (seen: ±6% per new connection for the same binary); with one, counts repeat.
  TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$out" \
    target/release/bench-server "$side" --listen "127.0.0.1:$p" 2>"$tmp/vg.log" &
  local vg=$!
  for _ in $(seq 1 600); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$p),0.2).close()" 2>/dev/null && break
    sleep 0.1
  done
  target/release/baton-bench "http://127.0.0.1:$p/" -n "$n" -c 8 --threads 1 --mode "$mode" --quiet --timeout 30s >/dev/null
  kill -TERM $vg; wait $vg 2>/dev/null || true
  grep -E '^(summary|totals):' "$out" | head -1 | awk '{print $2}'
}

printf '%-14s %14s %14s %12s\n' side "Ir($n1)" "Ir($n2)" "Ir/request"
declare -A per
for side in plain plain-timeout baton; do
  a=$(instructions "$side" "$n1"); b=$(instructions "$side" "$n2")
  per[$side]=$(( (b - a) / (n2 - n1) ))
  printf '%-14s %14d %14d %12d\n' "$side" "$a" "$b" "${per[$side]}"
done
python3 - "$mode" "${per[plain]}" "${per[plain-timeout]}" "${per[baton]}" <<'PY'
import sys
mode, plain, timeout, baton = sys.argv[1], *map(int, sys.argv[2:])
print(f"plain-timeout / plain instructions per request ({mode}): {timeout / plain:.3f}")
print(f"baton / plain-timeout instructions per request ({mode}): {baton / timeout:.3f}")
print(f"baton / plain instructions per request ({mode}): {baton / plain:.3f}")
PY
