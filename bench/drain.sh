#!/usr/bin/env bash
# Drain cost: how long the demo server takes to shut down with 100 / 1,000 / 10,000 idle
# keep-alive connections open, with the default idle grace (1 s: an idle connection is
# closed only after staying idle that long, so that a request already on the wire is
# answered, not lost) and with 10 ms (to show the mechanical cost of the drain itself).
# Measured from SIGTERM to the process's exit; the clients count clean closes vs resets.
#
# Usage: bash bench/drain.sh [RESULTS_DIR]   (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
results=${1:-bench/results/drain-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$results"
cargo build --release --example hello
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # FILE PATTERN SECONDS
  local deadline=$((SECONDS + $3))
  until grep -q "$2" "$1" 2>/dev/null; do
    if (( SECONDS > deadline )); then echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; return 1; fi
    sleep 0.05
  done
}

table="$results/drain.md"
{
  echo "| idle connections | idle grace | SIGTERM → exit, ms | server's drain time | client closes: clean / reset / other |"
  echo "|---|---|---|---|---|"
} > "$table"
for grace in 1s 10ms; do
  for n in 100 1000 10000; do
    port=$(free_port)
    ./target/release/examples/hello --listen "127.0.0.1:$port" --idle-grace "$grace" 2> "$tmp/server.log" &
    server=$!; pids+=("$server")
    wait_for "$tmp/server.log" "started listening" 10
    python3 bench/hold.py "$port" "$n" > "$tmp/hold.out" &
    holder=$!; pids+=("$holder")
    wait_for "$tmp/hold.out" "holding $n" 120
    t0=$(date +%s%N)
    kill -TERM "$server"
    wait "$server" || true
    t1=$(date +%s%N)
    wait "$holder" || true
    ms=$(( (t1 - t0) / 1000000 ))
    drained=$(grep -o 'drained [0-9]* connections*[^;]*' "$tmp/server.log" | head -1)
    closes=$(grep -o 'clean [0-9]*, reset [0-9]*, other [0-9]*' "$tmp/hold.out" | sed 's/clean //; s/, reset / \/ /; s/, other / \/ /')
    echo "| $n | $grace | $ms | $drained | $closes |" | tee -a "$table"
  done
done
echo
cat "$table"
