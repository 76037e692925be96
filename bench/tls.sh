#!/usr/bin/env bash
# HTTPS: what TLS costs baton's serving path, beside nginx with the same certificate,
# and baton's graceful restart over TLS under load.
#
#   bash bench/tls.sh [RESULTS_DIR]
#
#   1. steady load, no reloads, TLS_DURATION each: the demo over plain HTTP, the demo
#      over HTTPS, nginx over HTTPS (same certificate, session resumption off on both
#      sides), in three client modes: HTTP/1.1 keep-alive, HTTP/1.1 new connection per
#      request (a full handshake each), h2 keep-alive
#   2. the demo over HTTPS restarted (`kill -HUP`) every TLS_RELOAD_EVERY for
#      TLS_RELOAD_DURATION in the same three modes: failures
#
# Environment: TLS_DURATION (10s), TLS_RELOAD_DURATION (20s), TLS_RELOAD_EVERY (1s),
# BENCH_CONCURRENCY (50). Needs openssl (for the test CA) and installs nginx if missing.
# Writes RESULTS_DIR/tls.md. Exit status 1 if a restart run lost a request.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

results=${1:-$REPO_ROOT/bench/results/tls-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$results"
results=$(cd "$results" && pwd)
duration=${TLS_DURATION:-10s}
reload_duration=${TLS_RELOAD_DURATION:-20s}
every=${TLS_RELOAD_EVERY:-1s}
conc=${BENCH_CONCURRENCY:-50}

command -v openssl >/dev/null || die "openssl is needed for the test certificates"
ensure_packages
(cd "$REPO_ROOT" && cargo build --release -p baton-bench && cargo build --release -p baton --example hello) >&2
bench=$(bench_bin)
demo=$(demo_bin)
nginx=$(sbin nginx)

# A CA and a certificate for 127.0.0.1 signed by it (ECDSA P-256, as rcgen makes them).
pki=$BENCH_TMP/pki
mkdir -p "$pki"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=baton bench CA" -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=127.0.0.1" -keyout "$pki/server.key" -out "$pki/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' >"$pki/ext"
openssl x509 -req -in "$pki/server.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 2 -extfile "$pki/ext" -out "$pki/server.crt" 2>/dev/null

# start_demo NAME [ARGS...]: the demo on a free port; sets DIR PORT.
start_demo() {
    local name=$1
    shift
    DIR=$BENCH_TMP/$name
    mkdir -p "$DIR"
    PORT=$(free_port)
    setsid "$demo" --listen "127.0.0.1:$PORT" --pidfile "$DIR/demo.pid" "$@" \
        >"$DIR/demo.log" 2>&1 </dev/null &
    bench_track $!
    wait_port 127.0.0.1 "$PORT" 10 || die "$name: the demo did not start (see $DIR/demo.log)"
    wait_until 5 test -s "$DIR/demo.pid" || die "$name: no pid file"
}

start_nginx_tls() {
    DIR=$BENCH_TMP/nginx-tls
    mkdir -p "$DIR"
    PORT=$(free_port)
    render "$BENCH_DIR/configs/nginx-tls.conf" "$DIR/nginx.conf" DIR="$DIR" PORT="$PORT" \
        CERT="$pki/server.crt" KEY="$pki/server.key"
    "$nginx" -p "$DIR" -e "$DIR/error.log" -c "$DIR/nginx.conf" -t -q || die "nginx -t failed"
    "$nginx" -p "$DIR" -e "$DIR/error.log" -c "$DIR/nginx.conf" || die "nginx did not start"
    wait_until 5 test -s "$DIR/nginx.pid" || die "nginx wrote no pid file"
}

# run SLUG LABEL URL MODE [ARGS...]: one baton-bench run, report SLUG-MODE.json; MODE
# is h1-keep-alive, h1-new-conn or h2.
run() {
    local slug=$1 name=$2 url=$3 mode=$4
    shift 4
    local -a m
    case $mode in
    h1-keep-alive) m=(--mode keep-alive) ;;
    h1-new-conn) m=(--mode new-conn) ;;
    h2) m=(--mode keep-alive --http 2) ;;
    esac
    log "$name ($mode) ..." >&2
    "$bench" "$url" "${m[@]}" -c "$conc" --tls-ca "$pki/ca.crt" "$@" \
        --json "$results/$slug-$mode.json" --plot "$results/$slug-$mode.svg" \
        --label "$name, $mode" --max-failures 1000000000 --quiet >"$results/$slug-$mode.log" 2>&1 || true
    [[ -s $results/$slug-$mode.json ]] || die "$slug-$mode: no report (see $results/$slug-$mode.log)"
}

steady=()
for mode in h1-keep-alive h1-new-conn h2; do
    start_demo plain
    log "demo, plain HTTP ($mode) ..." >&2
    "$bench" "http://127.0.0.1:$PORT/" $([[ $mode == h2 ]] && echo --http 2) \
        $([[ $mode == h1-new-conn ]] && echo --mode new-conn) -c "$conc" -d "$duration" \
        --json "$results/demo-http-$mode.json" --label "demo, plain HTTP, $mode" --quiet \
        >"$results/demo-http-$mode.log" 2>&1 || true
    [[ -s $results/demo-http-$mode.json ]] || die "demo-http-$mode: no report"
    stop_under "$DIR"
    steady+=("$results/demo-http-$mode.json")

    start_demo https --tls-cert "$pki/server.crt" --tls-key "$pki/server.key"
    run demo-https "demo, HTTPS" "https://127.0.0.1:$PORT/" "$mode" -d "$duration"
    stop_under "$DIR"
    steady+=("$results/demo-https-$mode.json")

    start_nginx_tls
    run nginx-https "nginx, HTTPS" "https://127.0.0.1:$PORT/" "$mode" -d "$duration"
    "$nginx" -p "$DIR" -e "$DIR/error.log" -c "$DIR/nginx.conf" -s quit || true
    wait_until 5 bash -c "! test -e '$DIR/nginx.pid'" || stop_under "$DIR"
    steady+=("$results/nginx-https-$mode.json")
done

restarts=()
lost=0
for mode in h1-keep-alive h1-new-conn h2; do
    start_demo restart --tls-cert "$pki/server.crt" --tls-key "$pki/server.key"
    run restart-https "baton graceful restart, HTTPS" "https://127.0.0.1:$PORT/pid" "$mode" \
        -d "$reload_duration" --pid-body --reload 'kill -HUP {pid}' --reload-every "$every" \
        --pidfile "$DIR/demo.pid"
    n=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["failed"])' "$results/restart-https-$mode.json")
    lost=$((lost + n))
    stop_under "$DIR"
    restarts+=("$results/restart-https-$mode.json")
done

{
    echo "# HTTPS: the cost of TLS, and restarts over TLS"
    echo
    echo "Run $(date -u '+%Y-%m-%d %H:%M UTC') by \`bench/tls.sh\`, commit $(cd "$REPO_ROOT" && git rev-parse --short HEAD); $conc clients; $("$nginx" -v 2>&1)."
    echo "Rows in order: for each client mode (HTTP/1.1 keep-alive, HTTP/1.1 new connection per request, h2), the demo over plain HTTP, the demo over HTTPS, nginx over HTTPS."
    echo
    python3 "$BENCH_DIR/table.py" "${steady[@]}"
    echo
    echo "Restarts over HTTPS (\`kill -HUP\` every $every for $reload_duration):"
    echo
    python3 "$BENCH_DIR/table.py" "${restarts[@]}"
} >"$results/tls.md"
cat "$results/tls.md"
((lost == 0))
