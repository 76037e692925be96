#!/usr/bin/env bash
# nginx binary upgrade, as nginx's docs describe it, as one reload command:
#
#   bench/nginx-upgrade.sh PIDFILE
#
#   1. USR2 to the master: it renames PIDFILE to PIDFILE.oldbin and starts a new master
#      (same binary here) that inherits the listening sockets and writes PIDFILE;
#   2. wait until the new master is up (its pid in PIDFILE, and it has workers);
#   3. WINCH to the old master: its workers shut down gracefully;
#   4. QUIT to the old master, and wait until it is gone: while the old master lives,
#      the new one ignores the next USR2, so the next upgrade would silently not happen.
#
# Every wait is bounded by NGINX_UPGRADE_TIMEOUT seconds (default 10). Exit 0 when the
# old master is gone and the new one serves; 1 otherwise. Standalone on purpose (does
# not source lib.sh, whose exit trap would stop the server).
set -euo pipefail

pidfile=${1:?usage: nginx-upgrade.sh PIDFILE}
timeout=${NGINX_UPGRADE_TIMEOUT:-10}

die() {
    echo "nginx-upgrade: $*" >&2
    exit 1
}
now_ms() { date +%s%3N; }
wait_until() {
    local deadline=$(($(now_ms) + timeout * 1000))
    while (($(now_ms) < deadline)); do
        "$@" && return 0
        sleep 0.01
    done
    return 1
}
# A zombie still answers kill -0; the old master may stay one if nobody reaps it.
alive() {
    local state
    state=$(awk '{ sub(/^.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z && $state != X ]]
}
read_pid() {
    local p
    p=$(tr -dc 0-9 2>/dev/null <"$pidfile") || true
    echo "$p"
}
new_master_up() {
    new=$(read_pid)
    [[ -n $new && $new != "$old" ]] && alive "$new" &&
        [[ -n $(ps -o pid= --ppid "$new" 2>/dev/null) ]]
}
old_gone() { ! alive "$old"; }

old=$(read_pid)
if [[ -z $old ]] || ! alive "$old"; then die "no running master in $pidfile"; fi
new=

kill -USR2 "$old"
wait_until new_master_up || die "no new master within ${timeout}s (old $old; see the error log)"
kill -WINCH "$old"
kill -QUIT "$old"
wait_until old_gone || die "old master $old still there after ${timeout}s"
