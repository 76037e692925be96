# shellcheck shell=bash
# Sourced by bench/callgrind.sh and bench/callgrind-functions.sh: one server of
# `bench-server` under callgrind, serving N requests of baton-bench, then stopped.
#
#   cg_profile SIDE N MODE OUT    (SIDE: plain | plain-timeout | baton; OUT: callgrind's file)

cg_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cg_profile() {
  local side=$1 n=$2 mode=$3 out=$4 p vg
  p=$(cg_port)
  # One runtime worker: with two, the scheduling under valgrind varies from run to run
  # (seen: ±6% per new connection for the same binary); with one, counts repeat.
  TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$out" \
    target/release/bench-server "$side" --listen "127.0.0.1:$p" 2>"$out.vg.log" &
  vg=$!
  for _ in $(seq 1 600); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$p),0.2).close()" 2>/dev/null && break
    sleep 0.1
  done
  target/release/baton-bench "http://127.0.0.1:$p/" -n "$n" -c 8 --threads 1 --mode "$mode" --quiet --timeout 30s >/dev/null
  kill -TERM $vg; wait $vg 2>/dev/null || true
}
