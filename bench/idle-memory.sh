#!/usr/bin/env bash
# What an idle keep-alive connection costs in memory: N connections, one request each,
# then idle; the server's resident memory (VmRSS, with its worker processes) before
# and HOLD seconds after, divided by N. Sides: plain hyper-util (bench-server plain),
# baton (the demo, which parks a connection idle for 5 s), baton without parking
# (--no-park), nginx 1.22 (one worker).
#
# Usage: bash bench/idle-memory.sh     (N=10000, HOLD=8, SIDES="plain baton baton-no-park nginx")
set -euo pipefail
cd "$(dirname "$0")/.."
n=${N:-10000}
hold=${HOLD:-8}
sides=${SIDES:-plain baton baton-no-park nginx}
target=${CARGO_TARGET_DIR:-target}
cargo build --release -p baton-bench -p baton --all-features --examples --bins >&2
tmp=$(mktemp -d /tmp/baton-idle-memory.XXXXXX)
server=""
holder=""
cleanup() {
    [[ -n $holder ]] && kill "$holder" 2>/dev/null || true
    if [[ -n $server ]]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    if [[ -s $tmp/nginx.pid ]]; then
        kill -TERM "$(<"$tmp/nginx.pid")" 2>/dev/null || true
        sleep 0.5
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# The resident memory of a process and its children, in KiB.
rss() {
    local total=0 pid
    for pid in "$@" $(pgrep -P "$1" || true); do
        total=$((total + $(awk '/VmRSS/ { print $2 }' "/proc/$pid/status")))
    done
    echo "$total"
}
wait_port() {
    for _ in $(seq 100); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1)).close()" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    exit 1
}

printf '%-14s %8s %12s %12s %14s\n' side conns "rss before" "rss after" "bytes/conn"
for side in $sides; do
    port=$(free_port)
    main_pid=""
    case $side in
        plain)
            "$target/release/bench-server" plain --listen "127.0.0.1:$port" 2>"$tmp/server.log" &
            server=$!; main_pid=$server ;;
        baton)
            "$target/release/examples/hello" --listen "127.0.0.1:$port" 2>"$tmp/server.log" >&2 &
            server=$!; main_pid=$server ;;
        baton-no-park)
            "$target/release/examples/hello" --listen "127.0.0.1:$port" --no-park 2>"$tmp/server.log" >&2 &
            server=$!; main_pid=$server ;;
        nginx)
            mkdir -p "$tmp/nginx"
            sed -e "s|@DIR@|$tmp/nginx|g" -e "s|@PORT@|$port|g" \
                -e 's/worker_processes 2;/worker_processes 1;\nworker_rlimit_nofile 20000;/' \
                -e 's/worker_connections 4096;/worker_connections 19000;/' \
                bench/configs/nginx.conf >"$tmp/nginx/nginx.conf"
            sed -i "s|pid $tmp/nginx/nginx.pid;|pid $tmp/nginx.pid;|" "$tmp/nginx/nginx.conf"
            /usr/sbin/nginx -p "$tmp/nginx" -e "$tmp/nginx/error.log" -c "$tmp/nginx/nginx.conf"
            for _ in $(seq 50); do [[ -s $tmp/nginx.pid ]] && break; sleep 0.1; done
            main_pid=$(<"$tmp/nginx.pid") ;;
        *) echo "unknown side $side" >&2; exit 2 ;;
    esac
    wait_port "$port"
    sleep 1
    before=$(rss "$main_pid")
    python3 bench/hold.py "$port" "$n" >"$tmp/hold.out" 2>&1 &
    holder=$!
    for _ in $(seq 600); do grep -q '^holding' "$tmp/hold.out" && break; sleep 0.1; done
    grep -q "^holding $n" "$tmp/hold.out" || { echo "$side: the client could not hold $n connections: $(cat "$tmp/hold.out")" >&2; exit 1; }
    sleep "$hold"
    after=$(rss "$main_pid")
    printf '%-14s %8d %9d KiB %9d KiB %14d\n' "$side" "$n" "$before" "$after" $(((after - before) * 1024 / n))
    kill "$holder" 2>/dev/null || true
    wait "$holder" 2>/dev/null || true
    holder=""
    if [[ $side == nginx ]]; then
        kill -TERM "$main_pid"; sleep 0.5; rm -f "$tmp/nginx.pid"
    else
        kill "$server"; wait "$server" 2>/dev/null || true
    fi
    server=""
done
echo "commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')"
