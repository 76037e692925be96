#!/usr/bin/env bash
# baton's graceful restart, measured with baton-bench against the demo server:
#
#   bash bench/restart.sh [RESULTS_DIR]
#
#   1. many restarts under load, in both client modes (keep-alive, new connection per
#      request): failures, p99 in restart windows vs steady, and the serving
#      generation's descriptors and RSS sampled throughout (they must stay flat)
#   2. signal -> first response from a new PID, per restart (p50 / p90 / max)
#   3. 1,000 idle keep-alive connections, each sending one request at a random moment
#      0-500 ms after each restart
#   4. HTTP/2: 20 connections x 10 streams in flight across restarts
#   5. 300 restart signals 0.5 s apart: restarts done vs coalesced vs refused
#   6. 100 restart signals in a burst: generations alive at once, restarts done
#
# Environment: RESTART_SECTIONS (default "load latency idle h2 signals300 burst": the
# sections to run; the summary covers those), RESTARTS_LOAD_DURATION (210s: ~1,000
# restarts at RESTARTS_EVERY),
# RESTARTS_EVERY (200ms), BENCH_CONCURRENCY (50). Builds baton-bench and the demo
# (release) first. Writes RESULTS_DIR/restart.md (the summary) beside each run's JSON,
# SVG and log. Exit status 1 if any request failed anywhere (the figures are still
# written).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

results=${1:-$REPO_ROOT/bench/results/restart-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$results"
results=$(cd "$results" && pwd)
load_duration=${RESTARTS_LOAD_DURATION:-210s}
every=${RESTARTS_EVERY:-200ms}

(cd "$REPO_ROOT" && cargo build --release -p baton-bench && cargo build --release -p baton --example hello) >&2
bench=$(bench_bin)
demo=$(demo_bin)
# 1,000 idle connections and their server side.
ulimit -n "$(ulimit -Hn)"

# start_demo NAME ARGS...: the demo in its own session, pid file kept by itself.
start() {
    local name=$1 dir port
    shift
    dir=$BENCH_TMP/$name
    mkdir -p "$dir"
    port=$(free_port)
    setsid "$demo" --listen "127.0.0.1:$port" --pidfile "$dir/demo.pid" "$@" \
        >"$dir/demo.log" 2>&1 </dev/null &
    wait_port 127.0.0.1 "$port" 10 || die "$name: the demo did not start (see $dir/demo.log)"
    wait_until 5 test -s "$dir/demo.pid" || die "$name: no pid file"
    DIR=$dir PORT=$port
}

# run NAME BASELINE-ARGS...: baton-bench with the given arguments, report kept.
bench_run() {
    local name=$1
    shift
    log "$name: $*" >&2
    "$bench" "$@" --json "$results/$name.json" --plot "$results/$name.svg" --label "$name" \
        --max-failures 1000000000 --quiet >"$results/$name.log" 2>&1 || true
    [[ -s $results/$name.json ]] || die "$name: no report (see $results/$name.log)"
    cp "$DIR/demo.log" "$results/$name.server.log"
}

# sample FILE: every second, the serving generation's pid, descriptors and RSS (KiB).
sample() {
    local out=$1 pid
    echo "t_s pid fds rss_kib" >"$out"
    local t=0
    while [[ -e $DIR/demo.pid ]]; do
        pid=$(tr -dc 0-9 <"$DIR/demo.pid" 2>/dev/null || true)
        if [[ -n $pid && -d /proc/$pid ]]; then
            echo "$t $pid $(ls "/proc/$pid/fd" 2>/dev/null | wc -l) $(awk '/VmRSS/ { print $2 }' "/proc/$pid/status" 2>/dev/null)" >>"$out"
        fi
        sleep 1
        t=$((t + 1))
    done
}

# Zombie processes of the demo whose parent is a process of ours (a generation that
# exited and that its parent generation never reaped). Orphans belong to PID 1, which
# reaps them in its own time (this machine's init takes a few seconds).
zombies() { ps -eo stat=,ppid=,comm= | awk '$1 ~ /^Z/ && $2 != 1 && $3 ~ /hello/' | wc -l; }
sections=" ${RESTART_SECTIONS:-load latency idle h2 signals300 burst} "
want() { [[ $sections == *" $1 "* ]]; }
zombies_before=$(zombies)

# 1 and 2: restarts under load, both modes, the PID in the body.
want load && for mode in keep-alive new-conn; do
    start "load-$mode" --idle-grace 1s
    sample "$results/load-$mode.samples" &
    sampler=$!
    bench_run "load-$mode" "http://127.0.0.1:$PORT/pid" --pid-body --mode "$mode" \
        -c "$BENCH_CONCURRENCY" -d "$load_duration" --reload 'kill -HUP {pid}' \
        --reload-every "$every" --pidfile "$DIR/demo.pid"
    kill "$sampler" 2>/dev/null || true
    stop_under "$DIR"
done

# 2 on its own, unloaded but for a light client: the time the signal takes to reach
# a new generation's first answer, without 50 busy clients competing for the CPU.
want latency && start latency && bench_run latency "http://127.0.0.1:$PORT/pid" --pid-body --mode new-conn -c 2 -d 31s \
    --reload 'kill -HUP {pid}' --reload-every 1s --pidfile "$DIR/demo.pid" &&
    stop_under "$DIR"

# 3: idle keep-alive connections, one request each at a random moment after a restart,
# with the default idle grace (1 s) and with one longer than the clients' think time
# between two requests (2 s here): a connection whose request reached the old
# generation just *before* the signal did was answered without `Connection: close`,
# stays idle through the whole grace and is closed; baton-bench counts that close as a
# failure when the worker next uses the connection, 2 s later.
want idle && for grace in 1s 3s; do
    start "idle-grace-$grace" --idle-grace "$grace"
    bench_run "idle-grace-$grace" "http://127.0.0.1:$PORT/pid" --pid-body --mode idle -c 1000 \
        --idle-spread 500ms -d 42s --reload 'kill -HUP {pid}' --reload-every 2s \
        --pidfile "$DIR/demo.pid"
    stop_under "$DIR"
done

# 4: HTTP/2, 20 connections x 10 streams.
want h2 && start h2 && bench_run h2 "http://127.0.0.1:$PORT/pid" --pid-body --http 2 --streams 10 -c 20 -d 21s \
    --reload 'kill -HUP {pid}' --reload-every 2s --pidfile "$DIR/demo.pid" &&
    stop_under "$DIR"

# 5: 300 signals 0.5 s apart.
want signals300 && start signals300 && bench_run signals300 "http://127.0.0.1:$PORT/pid" --pid-body --mode new-conn -c 4 \
    -d 152s --reload 'kill -HUP {pid}' --reload-every 500ms --reloads 300 \
    --pidfile "$DIR/demo.pid" &&
    stop_under "$DIR"

# 6: a burst of 100 signals to the serving generation.
most=0 burst_restarts=0 burst_coalesced=0
if want burst; then
    start burst
    pid=$(tr -dc 0-9 <"$DIR/demo.pid")
    (
        for _ in $(seq 100); do kill -HUP "$pid" 2>/dev/null || true; done
    ) &
    for _ in $(seq 300); do
        n=$(pgrep -f -- "--pidfile $DIR/demo.pid" | wc -l || true)
        if ((n > most)); then most=$n; fi
        sleep 0.01
    done
    sleep 2
    cp "$DIR/demo.log" "$results/burst.server.log"
    burst_restarts=$(grep -c 'server reloading' "$DIR/demo.log" || true)
    burst_coalesced=$(grep -c 'coalesced into it' "$DIR/demo.log" || true)
    stop_under "$DIR"
fi
# A generation that exited while its parent (an older one) still ran is reaped by that
# parent; once every process is gone, none may be left.
sleep 1
zombies_after=$(zombies)

python3 - "$results" "$most" "$burst_restarts" "$burst_coalesced" \
    "$zombies_before" "$zombies_after" <<'EOF' | tee "$results/restart.md"
import json, sys, os
d, most, burst_restarts, burst_coalesced, z0, z1 = sys.argv[1:]
def load(n):
    return json.load(open(os.path.join(d, n + ".json")))
def have(n):
    return os.path.exists(os.path.join(d, n + ".json"))
def pct(r, key):
    lat = r.get("latency_ms") or {}
    return (lat.get(key) or {}).get("p99")
def log_count(name, pat):
    return sum(pat in line for line in open(os.path.join(d, name + ".server.log")))
print("# baton graceful restart, measured by bench/restart.sh\n")
print("| run | client | restarts (signals sent) | requests | failed | new PIDs seen | p99 steady (ms) | p99 in restart windows (ms) |")
print("|---|---|---|---|---|---|---|---|")
total_failed = 0
for name, client in [("load-keep-alive", "50 keep-alive"), ("load-new-conn", "50 new-conn"),
                     ("latency", "2 new-conn"), ("idle-grace-1s", "1,000 idle keep-alive, 1 request each 0-500 ms after; idle grace 1 s"),
                     ("idle-grace-3s", "the same, idle grace 3 s"),
                     ("h2", "h2c, 20 conns x 10 streams"), ("signals300", "4 new-conn, signals 0.5 s apart")]:
    if not have(name):
        continue
    r = load(name)
    rl = r.get("reloads") or {}
    total_failed += r.get("failed") or 0
    print(f"| {name} | {client} | {rl.get('count')} | {r.get('requests')} | {r.get('failed')} "
          f"| {rl.get('new_pids_after_trigger')} | {pct(r, 'steady')} | {pct(r, 'reload_windows')} |")
print()
print("Signal -> first response from a new PID (ms):\n")
print("| run | restarts measured | p50 | p90 | max | restarts without a new PID |")
print("|---|---|---|---|---|---|")
for name in ["latency", "load-new-conn", "load-keep-alive"]:
    if not have(name):
        continue
    rl = load(name).get("reloads") or {}
    l = rl.get("new_pid_latency_ms") or {}
    print(f"| {name} | {l.get('count')} | {l.get('p50')} | {l.get('p90')} | {l.get('max')} | {rl.get('triggers_without_new_pid')} |")
print()
for name in ["load-keep-alive", "load-new-conn"]:
    if not os.path.exists(os.path.join(d, name + ".samples")):
        continue
    rows = [l.split() for l in open(os.path.join(d, name + ".samples")).read().splitlines()[1:]]
    rows = [r for r in rows if len(r) == 4 and r[3].isdigit()]
    if rows:
        fds = [int(r[2]) for r in rows]; rss = [int(r[3]) for r in rows]
        print(f"- {name}: serving generation sampled {len(rows)} times: descriptors first {fds[0]}, "
              f"last {fds[-1]}, min {min(fds)}, max {max(fds)}; RSS first {rss[0]} KiB, last {rss[-1]} KiB, max {max(rss)} KiB")
if have("signals300"):
    reloading = log_count("signals300", "server reloading")
    coalesced = log_count("signals300", "coalesced into it")
    refused = log_count("signals300", "restart refused")
    sent = (load("signals300").get("reloads") or {}).get("count")
    print(f"- 300 signals 0.5 s apart: {sent} sent, {reloading} restarts started, {coalesced} coalesced, {refused} refused")
if os.path.exists(os.path.join(d, "burst.server.log")):
    print(f"- 100 signals in a burst: {burst_restarts} restarts started, {burst_coalesced} coalesced "
          f"(the kernel merges a signal that is already pending), at most {most} generations alive at once (sampled every ~10 ms)")
print(f"- zombie demo processes left by a generation (parent not PID 1), before / after: {z0} / {z1}")
print(f"\nTotal failed requests over every run: {total_failed}")
sys.exit(1 if total_failed else 0)
EOF
