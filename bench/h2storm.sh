#!/usr/bin/env bash
# HTTP/2 under a restart storm beside two CPU hogs (docs/BENCHMARKS.md §12): h2c, 20
# connections x 10 streams, a restart every 100 ms for 25 s.
#   bash bench/h2storm.sh            the demo restarting itself
#   bash bench/h2storm.sh run        the demo under `baton run --hand-over`
# Needs the release builds: cargo build --release --example hello -p baton &&
# cargo build --release -p baton-bench -p baton-cli
set -u
cd "$(dirname "$0")/.."
R=target/release
P=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
D=$(mktemp -d)
hogs=()
for _ in 1 2; do (exec nice -n 5 yes >/dev/null) & hogs+=($!); done
trap 'kill "${hogs[@]}" 2>/dev/null' EXIT
if [ "${1:-}" = run ]; then
  $R/baton run --listen 127.0.0.1:$P --hand-over -- $R/examples/hello 2>"$D/log" &
  M=$!
  for _ in $(seq 200); do grep -q " ready in " "$D/log" && break; sleep 0.05; done
  reload=(--reload "kill -HUP $M")
else
  $R/examples/hello --listen 127.0.0.1:$P --pidfile "$D/hello.pid" 2>"$D/log" &
  M=$!
  for _ in $(seq 200); do [ -s "$D/hello.pid" ] && break; sleep 0.05; done
  reload=(--reload 'kill -HUP {pid}' --pidfile "$D/hello.pid")
fi
$R/baton-bench --http 2 --streams 10 -c 20 --duration 25s "${reload[@]}" \
  --reload-every 100ms "http://127.0.0.1:$P/pid" | tail -14
status=${PIPESTATUS[0]}
if [ "${1:-}" = run ]; then kill -TERM $M; else kill -TERM "$(cat "$D/hello.pid")"; fi
wait $M 2>/dev/null
echo "log: $D/log"
exit "$status"
