#!/usr/bin/env bash
# How many requests do nginx and HAProxy lose when they reload under load? Runs each
# reload mechanism one after the other on this machine, client and server on
# 127.0.0.1, with baton-bench as the client, in both client modes (keep-alive, and a
# new connection per request), and prints a markdown table of the results.
#
#   bash bench/peers.sh [RESULTS_DIR [MECHANISM...]]
#
#   RESULTS_DIR  default bench/results/peers-YYYYmmdd-HHMMSS; gets one NAME-MODE.json,
#                NAME-MODE.svg and NAME-MODE.log per run, and peers.md (the table)
#   MECHANISM    a subset, in the order given (default: all below but nginx-hup)
#       nginx-reload       nginx 1.22, `nginx -s reload`
#       nginx-hup          nginx 1.22, `kill -HUP master`            (not run by default)
#       nginx-upgrade      nginx binary upgrade USR2, WINCH, QUIT (bench/nginx-upgrade.sh)
#       haproxy-mw-expose  HAProxy 2.6 master-worker, `kill -USR2 master`, expose-fd listeners
#       haproxy-mw         the same, stats socket without expose-fd listeners
#       haproxy-legacy     HAProxy legacy daemon, `haproxy -D ... -sf OLD`, no -x (lossy)
#       haproxy-legacy-x   HAProxy legacy daemon, `-x stats.sock -sf OLD`
#       kill-restart       the demo server SIGKILLed and started again (sure losses)
#       steady             the demo server, no reloads (control: must lose nothing)
#
# Environment: BENCH_DURATION (20s), BENCH_CONCURRENCY (50), BENCH_RELOAD_EVERY (1s),
# BENCH_MODES ("keep-alive new-conn").
#
# Run from the repository root as root on Debian 12: installs wrk, nginx and haproxy if
# missing (and stops their system services), builds baton-bench and the demo if
# missing. Losses are what is measured, so a run with failures is not an error; the
# exit status is 1 only if a run could not be made. Everything started is stopped on
# exit.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
source "$BENCH_DIR/mechanisms.sh"

case ${1:-} in
-h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
esac
# A first argument that names a mechanism (and no such directory exists) is one.
if (($#)) && is_mechanism "$1" && [[ ! -d $1 ]]; then
    set -- "" "$@"
fi
results=${1:-}
[[ -n $results ]] || results=$REPO_ROOT/bench/results/peers-$(date +%Y%m%d-%H%M%S)
shift || true
if (($#)); then names=("$@"); else names=("${MECHANISMS[@]}"); fi
for n in "${names[@]}"; do is_mechanism "$n" || die "unknown mechanism: $n (see bash $0 --help)"; done
read -r -a modes <<<"${BENCH_MODES:-keep-alive new-conn}"
for m in "${modes[@]}"; do [[ $m == keep-alive || $m == new-conn ]] || die "unknown mode: $m"; done

ensure_packages
bench=$(bench_bin)
mkdir -p "$results"
results=$(cd "$results" && pwd)

log "results: $results"
machine_info | sed 's/^- /  /'

jsons=() commands=() broken=()
for name in "${names[@]}"; do
    for mode in "${modes[@]}"; do
        slug=$name-$mode
        dir=$BENCH_TMP/$slug
        port=$(free_port)
        mech_start "$name" "$dir" "$port"
        args=("$MECH_URL" --mode "$mode" -c "$BENCH_CONCURRENCY" -d "$BENCH_DURATION"
            --json "$results/$slug.json" --plot "$results/$slug.svg" --label "$MECH_LABEL"
            --max-failures 1000000000 --quiet)
        if [[ -n $MECH_RELOAD ]]; then
            args+=(--reload "$MECH_RELOAD" --reload-every "$BENCH_RELOAD_EVERY" --pidfile "$MECH_PIDFILE")
            what="reload every $BENCH_RELOAD_EVERY"
        else
            what="no reloads"
        fi
        log "$MECH_LABEL, $mode: running $BENCH_DURATION ($what) ..."
        # In the background and `wait`ed for: bash runs a trap (TERM, INT) only once the
        # foreground command is done, but interrupts `wait` at once.
        "$bench" "${args[@]}" >"$results/$slug.log" 2>&1 &
        bench_pid=$!
        bench_track "$bench_pid"
        if wait "$bench_pid"; then rc=0; else rc=$?; fi
        bench_untrack "$bench_pid"
        # Exit 1 would only mean "more failures than --max-failures"; 2 and 3 mean no run.
        if ((rc >= 2)) || [[ ! -s $results/$slug.json ]]; then
            warn "$slug: baton-bench exited $rc without a report (see $results/$slug.log)"
            broken+=("$slug")
            # Keep the server's logs: they usually say why.
            mkdir -p "$results/$slug-server"
            cp "$dir"/*.log "$dir"/*.conf "$dir"/*.cfg "$results/$slug-server/" 2>/dev/null || true
        else
            jsons+=("$results/$slug.json")
            python3 - "$results/$slug.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
rl = r.get("reloads") or {}
per = rl.get("failed_per_reload")
print(f"  {r.get('requests')} requests, {r.get('failed')} failed"
      + (f", {per:.2f} per reload ({rl.get('count')} reloads)" if rl.get("count") and per is not None else ""))
EOF
        fi
        # The reload command as it ran, the run's temp dir shown as $RUN, its port as $PORT.
        if [[ -n $MECH_RELOAD ]]; then
            shown=${MECH_RELOAD//"$dir"/\$RUN}
            commands+=("- $MECH_LABEL: \`${shown//":$port"/:\$PORT}\`")
        fi
        stop_under "$dir"
    done
done

{
    echo "# Requests lost during reloads: nginx, HAProxy and controls"
    echo
    echo "Run $(date -u '+%Y-%m-%d %H:%M UTC') by \`bench/peers.sh\`, one run after the other on one machine."
    echo
    machine_info
    echo "- load generator: $("$bench" --version 2>/dev/null | head -1 || echo baton-bench)," \
        "$BENCH_CONCURRENCY workers, keep-alive or a new connection per request (new-conn)"
    echo
    if ((${#jsons[@]})); then python3 "$BENCH_DIR/table.py" "${jsons[@]}"; else echo "(no run produced a report)"; fi
    echo
    echo "Reload commands (\`{pid}\`/\`{pidfile}\`: the pid file's process at each trigger; \`\$RUN\`: the run's temp dir):"
    echo
    ((${#commands[@]} == 0)) || printf '%s\n' "${commands[@]}" | awk '!seen[$0]++'
    if ((${#broken[@]})); then
        echo
        echo "No report from: ${broken[*]} (server logs in NAME-MODE-server/)."
    fi
} >"$results/peers.md"

echo
cat "$results/peers.md"
((${#broken[@]} == 0))
