#!/usr/bin/env bash
# Checks the reload mechanics of bench/peers.sh without baton-bench: starts each
# mechanism's server with the same functions, checks the answer with curl, runs wrk
# against it while sending the reload command every second, and shows the process
# tree (pid file's process and its children) before and after every reload.
#
#   bash bench/wrk-check.sh [MECHANISM...]        (default: all of bench/mechanisms.sh)
#
# Environment: WRK_DURATION (s, default 5), WRK_RELOADS (default 4), BENCH_CONCURRENCY
# (default 50), WRK_MODES (default "keep-alive new-conn"). new-conn sends
# `Connection: close`, so wrk opens a new connection for every request.
# The figures are wrk's (a read error counts a request lost mid-flight; wrk also counts
# some reconnects as errors, so take them as early figures, not as the benchmark).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
source "$BENCH_DIR/mechanisms.sh"

WRK_DURATION=${WRK_DURATION:-5}
WRK_RELOADS=${WRK_RELOADS:-4}
read -r -a modes <<<"${WRK_MODES:-keep-alive new-conn}"

ensure_packages
if (($#)); then names=("$@"); else names=("${MECHANISMS[@]}"); fi
for n in "${names[@]}"; do is_mechanism "$n" || die "unknown mechanism: $n"; done

# check_mechanics NAME BEFORE AFTER: what a reload must have changed. BEFORE/AFTER are
# mech_procs strings "PID(CHILD ...)".
check_mechanics() {
    local name=$1 before=$2 after=$3 bpid apid bkids akids
    bpid=${before%%(*} apid=${after%%(*}
    bkids=${before#*(} akids=${after#*(}
    case $name in
    nginx-reload | nginx-hup | haproxy-mw-expose | haproxy-mw)
        # The master stays, the workers are new.
        [[ $bpid == "$apid" ]] || { echo "MASTER CHANGED"; return; }
        [[ $akids != "$bkids" ]] || { echo "SAME WORKERS"; return; }
        echo "ok: same master, new workers"
        ;;
    nginx-upgrade)
        [[ $bpid != "$apid" ]] || { echo "SAME MASTER"; return; }
        alive "$bpid" && { echo "OLD MASTER $bpid STILL RUNS"; return; }
        echo "ok: new master, old master gone"
        ;;
    haproxy-legacy | haproxy-legacy-x | kill-restart)
        [[ $bpid != "$apid" ]] || { echo "SAME PROCESS"; return; }
        if alive "$bpid"; then
            # -sf lets the old one finish its connections; SIGKILL must be final.
            [[ $name == kill-restart ]] && { echo "OLD PROCESS $bpid STILL RUNS"; return; }
            echo "ok: new process, old one still finishing"
        else
            echo "ok: new process, old one gone"
        fi
        ;;
    *) echo "-" ;;
    esac
}

summary=()
for name in "${names[@]}"; do
    for mode in "${modes[@]}"; do
        dir=$BENCH_TMP/$name-$mode
        port=$(free_port)
        mech_start "$name" "$dir" "$port"
        body=$(curl -sS --max-time 5 "$MECH_URL")
        log "== $MECH_LABEL, $mode: port $port, curl says '${body//$'\n'/\\n}', procs $(mech_procs)"
        wrk_args=(-t2 -c"$BENCH_CONCURRENCY" -d"${WRK_DURATION}s" --latency)
        [[ $mode == new-conn ]] && wrk_args+=(-H "Connection: close")
        wrk "${wrk_args[@]}" "$MECH_URL" >"$dir/wrk.out" 2>&1 &
        wrk_pid=$!
        bench_track "$wrk_pid"
        start=$(now_ms)
        reloads=0 bad=0
        if [[ -n $MECH_RELOAD ]]; then
            for ((i = 1; i <= WRK_RELOADS && i < WRK_DURATION; i++)); do
                # Reload i at start + i s, whatever the previous one took.
                wait_ms=$((start + i * 1000 - $(now_ms)))
                ((wait_ms > 0)) && sleep "$(printf '%d.%03d' $((wait_ms / 1000)) $((wait_ms % 1000)))"
                before=$(mech_procs)
                t0=$(now_ms)
                if timeout 15 sh -c "$(mech_reload_cmd)" >>"$dir/reload.log" 2>&1; then rc=0; else rc=$?; fi
                t1=$(now_ms)
                # Let the new generation come up before looking at it (HAProxy's
                # master re-executes itself, which takes ~0.2-0.9 s).
                sleep 0.4
                after=$(mech_procs)
                verdict=$(check_mechanics "$name" "$before" "$after")
                [[ $verdict == ok* ]] || bad=$((bad + 1))
                reloads=$((reloads + 1))
                log "   reload $i: exit $rc in $((t1 - t0)) ms; $before -> $after; $verdict"
            done
        fi
        wait "$wrk_pid" || warn "wrk exited $?"
        bench_untrack "$wrk_pid"
        reqs=$(awk '/requests in/ { print $1 }' "$dir/wrk.out")
        errs=$(grep -o 'Socket errors:.*' "$dir/wrk.out" || echo "Socket errors: none")
        non2xx=$(awk -F': ' '/Non-2xx/ { print $2 }' "$dir/wrk.out")
        rps=$(awk '/Requests\/sec/ { print $2 }' "$dir/wrk.out")
        p99=$(awk '$1 == "99%" { print $2 }' "$dir/wrk.out")
        line="$MECH_LABEL | $mode | reloads $reloads (${bad} unexpected) | requests ${reqs:-?} | $errs | non-2xx ${non2xx:-0} | req/s ${rps:-?} | p99 ${p99:-?}"
        log "   wrk: $line"
        summary+=("$line")
        [[ -s $dir/reload.log ]] && sed 's/^/   reload output: /' "$dir/reload.log" | head -5
        stop_under "$dir"
    done
done

log ""
log "== summary (wrk -t2 -c$BENCH_CONCURRENCY -d${WRK_DURATION}s, a reload every 1 s)"
machine_info
printf '%s\n' "${summary[@]}"
