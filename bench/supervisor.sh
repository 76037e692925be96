#!/usr/bin/env bash
# The `baton run` master, measured with baton-bench against the demo as its worker:
#
#   bash bench/supervisor.sh [RESULTS_DIR]
#
#   1. idle: the master's RSS, descriptors and CPU time over 10 s with nothing to do
#   2. reloads under load: `kill -HUP <master>` every SUPERVISOR_EVERY for
#      SUPERVISOR_DURATION in both client modes (keep-alive, new connection per
#      request): failures, time to the new worker, and the master's RSS and descriptors
#      sampled every second (they must stay flat)
#   3. SIGKILL of the serving worker every 2 s for 20 s under load, both modes: what
#      fails (only what was in flight on the killed worker may; nothing is refused)
#
# Environment: SUPERVISOR_DURATION (210s: ~1,000 reloads at SUPERVISOR_EVERY),
# SUPERVISOR_EVERY (200ms), BENCH_CONCURRENCY (50). Builds baton, baton-bench and the
# demo (release) first. Writes RESULTS_DIR/supervisor.md (the summary) beside each run's
# JSON, SVG and log. Exit status 1 if a reload run lost a request.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

results=${1:-$REPO_ROOT/bench/results/supervisor-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$results"
results=$(cd "$results" && pwd)
duration=${SUPERVISOR_DURATION:-210s}
every=${SUPERVISOR_EVERY:-200ms}
conc=${BENCH_CONCURRENCY:-50}

# The master as shipped: the dist profile (release + LTO, see Cargo.toml).
(cd "$REPO_ROOT" && cargo build --release -p baton-bench && cargo build --profile dist -p baton-cli &&
    cargo build --release -p baton --example hello) >&2
bench=$(bench_bin)
demo=$(demo_bin)
baton=$(target_dir)/dist/baton
[[ -x $baton ]] || die "no $baton after the build"

# start NAME: `baton start` in DIR=$BENCH_TMP/NAME on a free port; sets DIR PORT MASTER.
start() {
    local name=$1
    DIR=$BENCH_TMP/$name
    mkdir -p "$DIR"
    PORT=$(free_port)
    "$baton" start --name web --run-dir "$DIR" --listen "127.0.0.1:$PORT" \
        -- "$demo" --listen "127.0.0.1:$PORT" >"$results/$name.start.log" 2>&1 ||
        die "$name: baton start failed (see $results/$name.start.log)"
    MASTER=$(tr -dc 0-9 <"$DIR/web.pid")
    bench_track "$MASTER"
}

stop() {
    "$baton" stop --name web --run-dir "$DIR" >>"$results/$1.start.log" 2>&1 || warn "$1: stop failed"
    cp "$DIR/web.log" "$results/$1.server.log" 2>/dev/null || true
}

rss_kib() { awk '/VmRSS/ { print $2 }' "/proc/$1/status"; }
fds() { ls "/proc/$1/fd" | wc -l; }
# utime + stime of a process, in clock ticks.
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }

# sample FILE PID: every second, the master's descriptors and RSS (KiB), until it exits.
sample() {
    local out=$1 pid=$2 t=0
    echo "t_s fds rss_kib" >"$out"
    while alive "$pid"; do
        echo "$t $(fds "$pid" 2>/dev/null) $(rss_kib "$pid" 2>/dev/null)" >>"$out" || true
        sleep 1
        t=$((t + 1))
    done
}

summary=()
lost=0

# --- 1. idle ----------------------------------------------------------------------------
start idle
sleep 2
t0=$(cpu_ticks "$MASTER")
sleep 10
t1=$(cpu_ticks "$MASTER")
hz=$(getconf CLK_TCK)
summary+=("- idle master: RSS $(rss_kib "$MASTER") KiB, $(fds "$MASTER") descriptors, CPU $((t1 - t0)) ticks (1/$hz s) in 10 s")
worker=$(awk '{ print $NF }' "/proc/$MASTER/task/$MASTER/children")
summary+=("- its worker (the demo): RSS $(rss_kib "$worker") KiB")
stop idle

# --- 2. reloads under load --------------------------------------------------------------
jsons=()
for mode in keep-alive new-conn; do
    name=reload-$mode
    start "$name"
    sample "$results/$name.master.tsv" "$MASTER" &
    sampler=$!
    bench_track "$sampler"
    log "$name: baton run, kill -HUP every $every for $duration, $conc clients ..." >&2
    "$bench" "http://127.0.0.1:$PORT/pid" --pid-body --mode "$mode" -c "$conc" -d "$duration" \
        --reload 'kill -HUP {pid}' --reload-every "$every" --pidfile "$DIR/web.pid" \
        --json "$results/$name.json" --plot "$results/$name.svg" \
        --label "baton run reload" --max-failures 1000000000 --quiet >"$results/$name.log" 2>&1 || true
    [[ -s $results/$name.json ]] || die "$name: no report (see $results/$name.log)"
    # The last reload may still be draining: let it end before counting.
    sleep 2
    status=$("$baton" status --name web --run-dir "$DIR" --json)
    stop "$name"
    wait "$sampler" 2>/dev/null || true
    jsons+=("$results/$name.json")
    line=$(python3 - "$results/$name.json" "$results/$name.master.tsv" "$status" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
rows = [l.split() for l in open(sys.argv[2]).read().splitlines()[1:] if len(l.split()) == 3]
st = json.loads(sys.argv[3])
ng = (r.get("reloads") or {}).get("new_pid_latency_ms") or {}
fds = [int(x[1]) for x in rows]; rss = [int(x[2]) for x in rows]
print(f"{r['failed']}\t- {sys.argv[1].rsplit('/', 1)[1][:-5]}: {r['requests']} requests, {r['failed']} failed; "
      f"{st['reloads']['ok']} reloads done by the master ({st['reloads']['failed']} failed), "
      f"{(r.get('reloads') or {}).get('count')} triggers; time to the new worker p50 {ng.get('p50')} ms, "
      f"p90 {ng.get('p90')} ms, max {ng.get('max')} ms; master sampled {len(rows)} times: descriptors first {fds[0]}, last {fds[-1]}, "
      f"max {max(fds)}; RSS first {rss[0]} KiB, last {rss[-1]} KiB, max {max(rss)} KiB")
EOF
    )
    lost=$((lost + ${line%%$'\t'*}))
    summary+=("${line#*$'\t'}")
done

# --- 3. SIGKILL of the serving worker ---------------------------------------------------
kills=()
for mode in keep-alive new-conn; do
    name=kill-worker-$mode
    start "$name"
    log "$name: SIGKILL of the serving worker every 2s for 20s ..." >&2
    "$bench" "http://127.0.0.1:$PORT/pid" --pid-body --mode "$mode" -c "$conc" -d 20s \
        --reload 'kill -KILL $(awk "{ print \$NF }" /proc/{pid}/task/{pid}/children)' \
        --reload-every 2s --pidfile "$DIR/web.pid" \
        --json "$results/$name.json" --plot "$results/$name.svg" \
        --label "baton run, worker SIGKILLed" --max-failures 1000000000 --quiet >"$results/$name.log" 2>&1 || true
    [[ -s $results/$name.json ]] || die "$name: no report (see $results/$name.log)"
    stop "$name"
    kills+=("$results/$name.json")
done

{
    echo "# baton run: the master under reloads"
    echo
    echo "Run $(date -u '+%Y-%m-%d %H:%M UTC') by \`bench/supervisor.sh\`, commit $(cd "$REPO_ROOT" && git rev-parse --short HEAD)."
    echo
    echo "- machine: $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo); $(uname -sr)"
    echo "- $conc clients; reload = \`kill -HUP <master>\` every $every for $duration"
    echo
    printf '%s\n' "${summary[@]}"
    echo
    python3 "$BENCH_DIR/table.py" "${jsons[@]}" "${kills[@]}"
} >"$results/supervisor.md"
cat "$results/supervisor.md"
((lost == 0))
