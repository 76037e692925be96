#!/usr/bin/env bash
# baton watch: time from a saved file to the first response from the new worker,
# excluding the build (here `true`), with the demo as the worker (it says READY=1), and
# the requests a client loop (a new connection per request) loses meanwhile. Beside it,
# watchexec -r restarting the same demo, if WATCHEXEC names a watchexec binary
# (`cargo install watchexec-cli --locked` builds one).
#
#   bash bench/watch.sh [RESULTS_DIR]
#
# 20 saves, 3 s apart. Writes RESULTS_DIR/watch.md. The debounce (200 ms for baton,
# 50 ms for watchexec, their defaults) is part of the figure.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

results=${1:-$REPO_ROOT/bench/results/watch-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$results"
results=$(cd "$results" && pwd)
(cd "$REPO_ROOT" && cargo build --profile dist -p baton-cli && cargo build --release -p baton --example hello) >&2
demo=$(demo_bin)
baton=$(target_dir)/dist/baton
measure() {
    local name=$1 port=$2 file=$3
    python3 - "$port" "$file" >"$results/$name.json" <<'PY'
import json, os, socket, sys, threading, time, urllib.request
port, path = sys.argv[1], sys.argv[2]
stop = False
stats = {"ok": 0, "failed": 0, "errors": {}}
def client():
    while not stop:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                r.read()
            stats["ok"] += 1
        except Exception as e:
            stats["failed"] += 1
            k = type(getattr(e, "reason", e)).__name__
            stats["errors"][k] = stats["errors"].get(k, 0) + 1
            time.sleep(0.001)
def pid():
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/pid", timeout=5) as r:
                return r.read().strip()
        except Exception:
            time.sleep(0.002)
t = threading.Thread(target=client)
t.start()
times = []
time.sleep(1)
for i in range(20):
    before = pid()
    t0 = time.monotonic()
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(str(i))
    os.rename(tmp, path)
    while pid() == before:
        if time.monotonic() - t0 > 30:
            sys.exit("no new process within 30 s")
        time.sleep(0.002)
    times.append((time.monotonic() - t0) * 1000)
    time.sleep(3)
stop = True
t.join()
times.sort()
print(json.dumps({"saves": len(times), "p50_ms": round(times[len(times) // 2], 1),
                  "p90_ms": round(times[int(len(times) * 0.9) - 1], 1), "max_ms": round(times[-1], 1),
                  "client_requests": stats["ok"] + stats["failed"], "client_failed": stats["failed"],
                  "client_errors": stats["errors"]}))
PY
}

dir=$BENCH_TMP/watch
mkdir -p "$dir/src"
echo 0 >"$dir/src/file.txt"
port=$(free_port)
(cd "$dir" && exec "$baton" watch --path src --build true --listen "127.0.0.1:$port" \
    -- "$demo" --listen "127.0.0.1:$port") >"$results/baton-watch.log" 2>&1 &
bench_track $!
wait_port 127.0.0.1 "$port" 20 || die "baton watch did not start (see $results/baton-watch.log)"
log "baton watch: 20 saves ..." >&2
measure baton-watch "$port" "$dir/src/file.txt"
stop_under "$dir"
lines=("- baton watch (reload): $(cat "$results/baton-watch.json")")

if [[ -n ${WATCHEXEC:-} ]]; then
    dir=$BENCH_TMP/watchexec
    mkdir -p "$dir/src"
    echo 0 >"$dir/src/file.txt"
    port=$(free_port)
    # -r: on a change, SIGTERM (the demo drains), wait for the exit, start anew. No
    # --socket: watchexec does not set LISTEN_PID, so a server that checks it (as the
    # systemd protocol says it must) binds its own socket each time.
    (cd "$dir" && exec "$WATCHEXEC" -r -w src -- "$demo" --listen "127.0.0.1:$port") \
        >"$results/watchexec.log" 2>&1 &
    bench_track $!
    wait_port 127.0.0.1 "$port" 20 || die "watchexec did not start the demo"
    log "watchexec -r: 20 saves ..." >&2
    measure watchexec "$port" "$dir/src/file.txt"
    stop_under "$dir"
    lines+=("- $("$WATCHEXEC" --version | head -1) -r (restart): $(cat "$results/watchexec.json")")
fi
{
    echo "# baton watch: save to new worker"
    echo
    echo "Run $(date -u '+%Y-%m-%d %H:%M UTC') by \`bench/watch.sh\`, commit $(cd "$REPO_ROOT" && git rev-parse --short HEAD)."
    echo
    printf '%s\n' "${lines[@]}"
} >"$results/watch.md"
cat "$results/watch.md"
