# shellcheck shell=bash
# Helpers sourced by the bench scripts (bench/peers.sh, bench/wrk-check.sh).
#
#   source "$(dirname "$0")/lib.sh"
#
# Safe under `set -euo pipefail`. Sourcing creates a per-run temp dir ($BENCH_TMP) and
# installs an EXIT trap that stops every process the script started and removes the
# dir. "Every process the script started" is found without matching names:
#   - PIDs registered with bench_track,
#   - PIDs in pid files under $BENCH_TMP, if that process is one of the server binaries,
#   - processes whose command line contains $BENCH_TMP (every config we start lives
#     there, and the mktemp name is unique to this run),
#   - and all descendants of those (nginx workers, HAProxy workers).
#
# Environment overrides (passed through to baton-bench as given):
#   BENCH_DURATION      run time of each run        (default 20s)
#   BENCH_CONCURRENCY   concurrent client workers   (default 50)
#   BENCH_RELOAD_EVERY  time between two reloads    (default 1s)

set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_DIR/.." && pwd)
BENCH_DURATION=${BENCH_DURATION:-20s}
BENCH_CONCURRENCY=${BENCH_CONCURRENCY:-50}
BENCH_RELOAD_EVERY=${BENCH_RELOAD_EVERY:-1s}
BENCH_PIDS=()

log() { printf '%s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# --- packages -----------------------------------------------------------------------

# Installs what the bench needs if missing (Debian 12), then makes sure the distro's
# nginx/HAProxy services are not running: they would hold ports and burn CPU beside
# the processes we measure.
ensure_packages() {
    local missing=() cmd pkg pair
    for pair in wrk:wrk nginx:nginx haproxy:haproxy python3:python3 curl:curl ps:procps; do
        cmd=${pair%%:*} pkg=${pair#*:}
        have_cmd "$cmd" || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        [[ $EUID -eq 0 ]] || die "missing packages (${missing[*]}); run as root to install them"
        log "installing: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
    stop_system_services
}

# `command -v` misses /usr/sbin when it is not on PATH (non-login root shells).
have_cmd() { command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 ]]; }
sbin() { command -v "$1" 2>/dev/null || echo "/usr/sbin/$1"; }

stop_system_services() {
    local svc pid
    [[ $EUID -eq 0 ]] || return 0
    for svc in nginx haproxy; do
        if [[ -d /run/systemd/system ]] && have_cmd systemctl; then
            systemctl disable --now "$svc" >/dev/null 2>&1 || true
        elif [[ -x /etc/init.d/$svc ]]; then
            "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
        fi
        # No init system (containers): stop the instance the package's pid file names,
        # and only if that PID really is the distro's binary.
        if [[ -s /run/$svc.pid ]]; then
            pid=$(<"/run/$svc.pid")
            if [[ $pid =~ ^[0-9]+$ ]] && [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == */$svc ]]; then
                log "stopping the system $svc (pid $pid)"
                kill -TERM "$pid" 2>/dev/null || true
            fi
        fi
    done
}

# --- binaries built from this repository ------------------------------------------

target_dir() { echo "${CARGO_TARGET_DIR:-$REPO_ROOT/target}"; }

# Path of the load generator; builds it only if it is not there yet.
bench_bin() {
    local bin
    bin="$(target_dir)/release/baton-bench"
    if [[ ! -x $bin ]]; then
        log "building baton-bench (cargo build --release -p baton-bench) ..." >&2
        (cd "$REPO_ROOT" && cargo build --release -p baton-bench) >&2
    fi
    [[ -x $bin ]] || die "no $bin after the build"
    echo "$bin"
}

# Path of the demo server; builds it only if it is not there yet.
demo_bin() {
    local bin
    bin="$(target_dir)/release/examples/hello"
    if [[ ! -x $bin ]]; then
        log "building the demo (cargo build --release --example hello) ..." >&2
        (cd "$REPO_ROOT" && cargo build --release --example hello) >&2
    fi
    [[ -x $bin ]] || die "no $bin after the build"
    echo "$bin"
}

# --- ports ----------------------------------------------------------------------------

# A port the kernel just handed out on loopback. There is a window between closing
# this socket and the server binding it; on a quiet machine nobody takes it.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

now_ms() { date +%s%3N; }

# wait_port HOST PORT TIMEOUT_S: until a TCP connect succeeds, at most TIMEOUT_S.
wait_port() {
    local host=$1 port=$2 timeout=${3:-5} deadline
    deadline=$(($(now_ms) + timeout * 1000))
    while (($(now_ms) < deadline)); do
        if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    return 1
}

# wait_until TIMEOUT_S CMD...: until CMD succeeds, polling every 20 ms, bounded.
wait_until() {
    local timeout=$1 deadline
    shift
    deadline=$(($(now_ms) + timeout * 1000))
    while (($(now_ms) < deadline)); do
        "$@" && return 0
        sleep 0.02
    done
    return 1
}

# --- processes ----------------------------------------------------------------------

# Alive and not a zombie: a reparented, unreaped process still answers `kill -0`.
alive() {
    local state
    [[ -r /proc/$1/stat ]] || return 1
    state=$(awk '{ sub(/^.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z && $state != X ]]
}

bench_track() { BENCH_PIDS+=("$@"); }

# Forget a PID once it has been waited for: its number may be reused by then.
bench_untrack() {
    local keep=() p
    for p in "${BENCH_PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    BENCH_PIDS=("${keep[@]}")
}

# Children of PID, one per line.
children() { ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ' || true; }

# PIDs and all their descendants, one per line.
with_descendants() {
    local queue=("$@") seen=" " p c
    while ((${#queue[@]})); do
        p=${queue[0]}
        queue=("${queue[@]:1}")
        [[ $seen == *" $p "* ]] && continue
        seen+="$p "
        echo "$p"
        for c in $(children "$p"); do queue+=("$c"); done
    done
}

# The server binaries whose PIDs we accept from a pid file.
is_server_pid() {
    local exe
    exe=$(readlink "/proc/$1/exe" 2>/dev/null) || return 1
    case $exe in
    */nginx | */haproxy | */examples/hello) return 0 ;;
    *) return 1 ;;
    esac
}

# Every process started under DIR (see the header), with descendants; never this
# shell or its ancestors.
procs_under() {
    local dir=$1 f pid roots=() mine=" $$ ${BASHPID:-$$} " p
    p=$$
    while [[ $p =~ ^[0-9]+$ ]] && ((p > 1)); do
        mine+="$p "
        p=$(awk '{ sub(/^.*\) /, ""); print $2 }' "/proc/$p/stat" 2>/dev/null || echo 0)
    done
    while IFS= read -r f; do
        pid=$(head -c 20 "$f" 2>/dev/null | tr -dc 0-9)
        [[ -n $pid ]] && is_server_pid "$pid" && roots+=("$pid")
    done < <(find "$dir" -name '*.pid*' -type f 2>/dev/null)
    while IFS= read -r f; do
        pid=${f#/proc/}
        pid=${pid%/cmdline}
        # grep itself matched its own command line: skip it (and any other grep).
        alive "$pid" || continue
        [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == */grep ]] && continue
        roots+=("$pid")
    done < <(grep -laF -- "$dir" /proc/[0-9]*/cmdline 2>/dev/null || true)
    ((${#roots[@]})) || return 0
    for p in $(with_descendants "${roots[@]}"); do
        [[ $mine == *" $p "* ]] || echo "$p"
    done
}

# kill_procs PID...: TERM, up to 3 s to go, then KILL what is left.
kill_procs() {
    local p left
    (($#)) || return 0
    kill -TERM "$@" 2>/dev/null || true
    for _ in $(seq 150); do
        left=0
        for p in "$@"; do alive "$p" && left=1; done
        ((left)) || return 0
        sleep 0.02
    done
    kill -KILL "$@" 2>/dev/null || true
}

# Stops everything started under DIR (one run's server).
stop_under() {
    local pids
    mapfile -t pids < <(procs_under "$1")
    kill_procs "${pids[@]}"
}

bench_cleanup() {
    local rc=$? pids=()
    set +e
    if ((${#BENCH_PIDS[@]})); then
        mapfile -t pids < <(with_descendants "${BENCH_PIDS[@]}")
    fi
    [[ -n ${BENCH_TMP:-} && -d $BENCH_TMP ]] && mapfile -t -O "${#pids[@]}" pids < <(procs_under "$BENCH_TMP")
    kill_procs "${pids[@]}"
    [[ -n ${BENCH_TMP:-} ]] && rm -rf -- "$BENCH_TMP"
    exit "$rc"
}

BENCH_TMP=$(mktemp -d "${TMPDIR:-/tmp}/baton-bench.XXXXXX")
trap bench_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- templates and reports ------------------------------------------------------------

# render TEMPLATE OUT KEY=VALUE...: replaces @KEY@ in TEMPLATE.
render() {
    local tpl=$1 out=$2 kv args=()
    shift 2
    for kv; do args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
    sed "${args[@]}" "$tpl" >"$out"
    if grep -q '@[A-Z_]*@' "$out"; then die "unfilled placeholder in $out"; fi
}

# The machine the figures come from, as markdown bullet lines.
machine_info() {
    local cpu
    cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
    echo "- machine: $(nproc) CPUs${cpu:+ ($cpu)}, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "- kernel: $(uname -srm)"
    echo "- os: $(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-?}")"
    echo "- nginx: $("$(sbin nginx)" -v 2>&1 | head -1 || true)"
    echo "- haproxy: $("$(sbin haproxy)" -v 2>&1 | head -1 || true)"
    echo "- wrk: $(wrk --version 2>&1 | head -1 || true)"
    echo "- client/server: same machine, 127.0.0.1; duration $BENCH_DURATION, concurrency $BENCH_CONCURRENCY, reload every $BENCH_RELOAD_EVERY"
}
