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
source bench/callgrind-lib.sh  # from the repository root (cd above)

instructions() { # SIDE N -> total instructions of the server process
  local out=$tmp/cg.$1.$2
  cg_profile "$1" "$2" "$mode" "$out"
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
