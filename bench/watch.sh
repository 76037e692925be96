#!/usr/bin/env bash
# baton watch: time from a saved file to the first response from the new worker,
# excluding the build (here `true`), with the demo as the worker (it says READY=1).
#
#   bash bench/watch.sh [RESULTS_DIR]
#
# 20 saves, 3 s apart. Writes RESULTS_DIR/watch.md. The debounce (200 ms by default)
# is part of the figure: it is what waits for a burst of saves to end.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

results=${1:-$REPO_ROOT/bench/results/watch-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$results"
results=$(cd "$results" && pwd)
(cd "$REPO_ROOT" && cargo build --profile dist -p baton-cli && cargo build --release -p baton --example hello) >&2
demo=$(demo_bin)
baton=$(target_dir)/dist/baton
dir=$BENCH_TMP/watch
mkdir -p "$dir/src"
echo 0 >"$dir/src/file.txt"
port=$(free_port)
(cd "$dir" && exec "$baton" watch --path src --build true --listen "127.0.0.1:$port" \
    -- "$demo" --listen "127.0.0.1:$port") >"$results/watch.log" 2>&1 &
bench_track $!
wait_port 127.0.0.1 "$port" 20 || die "baton watch did not start (see $results/watch.log)"
python3 - "$port" "$dir/src/file.txt" >"$results/watch.json" <<'PY'
import json, os, sys, time, urllib.request
port, path = sys.argv[1], sys.argv[2]
def pid():
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/pid", timeout=5) as r:
        return r.read().strip()
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
            sys.exit("no new worker within 30 s")
        time.sleep(0.002)
    times.append((time.monotonic() - t0) * 1000)
    time.sleep(3)
times.sort()
print(json.dumps({"saves": len(times), "p50_ms": round(times[len(times) // 2], 1),
                  "p90_ms": round(times[int(len(times) * 0.9) - 1], 1), "max_ms": round(times[-1], 1)}))
PY
{
    echo "# baton watch: save to new worker"
    echo
    echo "Run $(date -u '+%Y-%m-%d %H:%M UTC') by \`bench/watch.sh\`, commit $(cd "$REPO_ROOT" && git rev-parse --short HEAD)."
    echo
    echo "- $(cat "$results/watch.json")"
} >"$results/watch.md"
cat "$results/watch.md"
