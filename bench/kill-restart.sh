#!/usr/bin/env bash
# The sure-lossy "reload": SIGKILL the server, start it again.
#
#   bench/kill-restart.sh PIDFILE [--wait HOST:PORT] -- CMD [ARGS...]
#
# SIGKILLs the pid in PIDFILE (if there is one and it runs), starts CMD in the
# background in its own session (so it outlives this script and whoever runs it),
# writes its pid to PIDFILE, and waits (bounded: KILL_RESTART_TIMEOUT s, default 10)
# until HOST:PORT accepts a connection. HOST:PORT defaults to CMD's `--listen` value.
# With no PIDFILE yet, it only starts CMD: bench/peers.sh starts the demo this way.
# CMD's output is appended to PIDFILE.log. Standalone on purpose (does not source lib.sh).
set -euo pipefail

usage() {
    echo "usage: kill-restart.sh PIDFILE [--wait HOST:PORT] -- CMD [ARGS...]" >&2
    exit 2
}
pidfile=${1:-}
[[ -n $pidfile ]] || usage
shift
addr=
while (($#)) && [[ $1 != -- ]]; do
    case $1 in
    --wait)
        (($# >= 2)) || usage
        addr=$2
        shift 2
        ;;
    *) usage ;;
    esac
done
[[ ${1:-} == -- ]] || usage
shift
(($#)) || usage
timeout=${KILL_RESTART_TIMEOUT:-10}

if [[ -z $addr ]]; then
    prev=
    for a in "$@"; do
        [[ $prev == --listen ]] && addr=$a
        [[ $a == --listen=* ]] && addr=${a#--listen=}
        prev=$a
    done
fi
[[ $addr == *:* ]] || { echo "kill-restart: no HOST:PORT to wait for (--wait)" >&2; exit 2; }
host=${addr%:*} port=${addr##*:}

now_ms() { date +%s%3N; }
alive() {
    local state
    state=$(awk '{ sub(/^.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z && $state != X ]]
}

old=$(tr -dc 0-9 2>/dev/null <"$pidfile") || true
if [[ -n $old ]] && alive "$old"; then
    kill -KILL "$old"
    # The listening socket is closed only once the process is gone.
    deadline=$(($(now_ms) + timeout * 1000))
    while alive "$old"; do
        (($(now_ms) < deadline)) || { echo "kill-restart: $old survived SIGKILL" >&2; exit 1; }
        sleep 0.005
    done
fi

# setsid: not in the caller's process group, so a caller that kills its reload
# command's group does not take the server with it. A background child of a
# non-interactive shell is not a group leader, so setsid(1) does not fork: $! is CMD.
setsid "$@" </dev/null >>"$pidfile.log" 2>&1 &
new=$!
echo "$new" >"$pidfile.tmp"
mv -f "$pidfile.tmp" "$pidfile"

deadline=$(($(now_ms) + timeout * 1000))
until (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; do
    alive "$new" || { echo "kill-restart: $1 exited at start (see $pidfile.log)" >&2; exit 1; }
    (($(now_ms) < deadline)) || { echo "kill-restart: $addr not answering after ${timeout}s" >&2; exit 1; }
    sleep 0.005
done
