#!/usr/bin/env bash
# Slow clients against the demo: 1,000 slowloris connections (a header byte every 2 s),
# first alone with well-behaved clients, then during restarts.
#
#   bash bench/slowloris.sh [RESULTS_DIR]
#
#   1. header-read timeout 10 s, no restarts: how long the slow connections live, and
#      what the 50 well-behaved clients (baton-bench, new connection per request) see
#   2. the same attack with `kill -HUP` every 5 s: the well-behaved clients' failures
#
# Writes RESULTS_DIR/slowloris.md. Exit status 1 if a well-behaved request failed.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

results=${1:-$REPO_ROOT/bench/results/slowloris-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$results"
results=$(cd "$results" && pwd)
(cd "$REPO_ROOT" && cargo build --release -p baton-bench && cargo build --release -p baton --example hello) >&2
bench=$(bench_bin)
demo=$(demo_bin)
ulimit -n "$(ulimit -Hn)"

out=()
lost=0
for phase in alone restarts; do
    dir=$BENCH_TMP/$phase
    mkdir -p "$dir"
    port=$(free_port)
    setsid "$demo" --listen "127.0.0.1:$port" --pidfile "$dir/demo.pid" --header-read-timeout 10s \
        >"$dir/demo.log" 2>&1 </dev/null &
    bench_track $!
    wait_port 127.0.0.1 "$port" 10 || die "the demo did not start"
    wait_until 5 test -s "$dir/demo.pid" || die "no pid file"
    reload=()
    [[ $phase == restarts ]] && reload=(--reload 'kill -HUP {pid}' --reload-every 5s --pidfile "$dir/demo.pid")
    log "$phase: 1,000 slowloris connections for 30 s beside 50 clients ..." >&2
    python3 "$BENCH_DIR/slowloris.py" "127.0.0.1:$port" 1000 2 30 >"$results/$phase-slowloris.json" &
    slow=$!
    "$bench" "http://127.0.0.1:$port/" --mode new-conn -c 50 -d 30s "${reload[@]}" \
        --json "$results/$phase.json" --label "50 clients beside 1,000 slowloris ($phase)" \
        --max-failures 1000000000 --quiet >"$results/$phase.log" 2>&1 || true
    wait "$slow"
    n=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["failed"])' "$results/$phase.json")
    lost=$((lost + n))
    out+=("- $phase: slow connections $(cat "$results/$phase-slowloris.json")")
    stop_under "$dir"
done
{
    echo "# Slowloris against the demo"
    echo
    echo "Run $(date -u '+%Y-%m-%d %H:%M UTC') by \`bench/slowloris.sh\`, commit $(cd "$REPO_ROOT" && git rev-parse --short HEAD)."
    echo
    printf '%s\n' "${out[@]}"
    echo
    python3 "$BENCH_DIR/table.py" "$results/alone.json" "$results/restarts.json"
} >"$results/slowloris.md"
cat "$results/slowloris.md"
((lost == 0))
