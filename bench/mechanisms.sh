# shellcheck shell=bash
# shellcheck disable=SC2034  # MECH_* are read by the scripts that source this file.
# The reload mechanisms measured by bench/peers.sh (and checked with wrk by
# bench/wrk-check.sh). Sourced after lib.sh.
#
#   mech_start NAME DIR PORT   starts NAME's server in DIR on 127.0.0.1:PORT and sets
#       MECH_LABEL    the run's name in reports
#       MECH_URL      what the client requests
#       MECH_PIDFILE  the pid file that names the process a reload is sent to
#       MECH_RELOAD   the reload command for `sh -c`, with baton-bench's {pid} and
#                     {pidfile} placeholders; empty for the no-reload control
#   stop_under DIR             stops it again (lib.sh)
#
# Names (the ones in MECHANISMS run by default, in this order):
#   nginx-reload       nginx 1.22, `nginx -s reload`
#   nginx-upgrade      nginx binary upgrade: USR2, WINCH, QUIT (bench/nginx-upgrade.sh)
#   haproxy-mw-expose  HAProxy 2.6 master-worker, `kill -USR2 master`, expose-fd listeners
#   haproxy-mw         the same without expose-fd listeners
#   haproxy-legacy     HAProxy legacy daemon, `-sf OLD` without `-x` (the lossy one)
#   haproxy-legacy-x   HAProxy legacy daemon, `-x stats.sock -sf OLD`
#   baton-restart      the demo server, graceful restart: `kill -HUP {pid}` (the pid file
#                      is rewritten by each new generation once it is ready)
#   baton-run          the demo as the worker of `baton run` (dist profile), `kill -HUP` to
#                      the master (its pid file never changes)
#   kill-restart       the demo server SIGKILLed and started again (bench/kill-restart.sh)
#   steady             the demo server, no reloads (control: must lose nothing)
# Also available, not run by default:
#   nginx-hup          nginx 1.22, `kill -HUP master`

MECHANISMS=(baton-restart baton-run nginx-reload nginx-upgrade haproxy-mw-expose haproxy-mw haproxy-legacy
    haproxy-legacy-x kill-restart steady)
MECHANISMS_EXTRA=(nginx-hup)

is_mechanism() {
    local m
    for m in "${MECHANISMS[@]}" "${MECHANISMS_EXTRA[@]}"; do [[ $m == "$1" ]] && return 0; done
    return 1
}

# printf %q each word: the commands go through `sh -c` and paths may hold spaces.
shell_join() {
    local out='' w
    for w; do out+="$(printf '%q' "$w") "; done
    echo "${out% }"
}

mech_start() {
    local name=$1 dir=$2 port=$3
    mkdir -p "$dir"
    MECH_URL="http://127.0.0.1:$port/"
    MECH_PIDFILE=
    MECH_RELOAD=
    case $name in
    nginx-reload | nginx-hup | nginx-upgrade) start_nginx "$name" "$dir" "$port" ;;
    haproxy-*) start_haproxy "$name" "$dir" "$port" ;;
    kill-restart | steady | baton-restart) start_demo "$name" "$dir" "$port" ;;
    baton-run) start_baton_run "$dir" "$port" ;;
    *) die "unknown mechanism: $name" ;;
    esac
    wait_port 127.0.0.1 "$port" 10 || die "$name: nothing answers on 127.0.0.1:$port (logs in $dir)"
}

start_nginx() {
    local name=$1 dir=$2 port=$3 nginx
    local -a base
    # Absolute path: the binary upgrade execve()s argv[0] without searching PATH.
    nginx=$(sbin nginx)
    base=("$nginx" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf")
    render "$BENCH_DIR/configs/nginx.conf" "$dir/nginx.conf" DIR="$dir" PORT="$port"
    "${base[@]}" -t -q || die "nginx -t failed for $dir/nginx.conf"
    "${base[@]}" >"$dir/start.log" 2>&1 || die "nginx did not start (see $dir/error.log)"
    MECH_PIDFILE=$dir/nginx.pid
    wait_until 5 test -s "$MECH_PIDFILE" || die "nginx wrote no $MECH_PIDFILE"
    case $name in
    nginx-reload)
        MECH_LABEL="nginx -s reload"
        MECH_RELOAD="$(shell_join "${base[@]}" -s reload)"
        ;;
    nginx-hup)
        MECH_LABEL="nginx kill -HUP"
        MECH_RELOAD="kill -HUP {pid}"
        ;;
    nginx-upgrade)
        MECH_LABEL="nginx binary upgrade (USR2, WINCH, QUIT)"
        MECH_RELOAD="$(shell_join bash "$BENCH_DIR/nginx-upgrade.sh") {pidfile}"
        ;;
    esac
}

start_haproxy() {
    local name=$1 dir=$2 port=$3 haproxy cfg
    haproxy=$(sbin haproxy)
    cfg=$dir/haproxy.cfg
    render "$BENCH_DIR/configs/$name.cfg" "$cfg" DIR="$dir" PORT="$port"
    "$haproxy" -c -q -f "$cfg" || die "haproxy -c failed for $cfg"
    MECH_PIDFILE=$dir/haproxy.pid
    case $name in
    haproxy-mw-expose | haproxy-mw)
        # -W master-worker, -D the master daemonizes; the pid file holds the master.
        "$haproxy" -W -D -f "$cfg" -p "$MECH_PIDFILE" >"$dir/start.log" 2>&1 ||
            die "haproxy did not start (see $dir/start.log)"
        MECH_RELOAD="kill -USR2 {pid}"
        if [[ $name == haproxy-mw-expose ]]; then
            MECH_LABEL="HAProxy master-worker USR2 (expose-fd listeners)"
        else
            MECH_LABEL="HAProxy master-worker USR2 (no expose-fd)"
        fi
        ;;
    haproxy-legacy)
        "$haproxy" -D -f "$cfg" -p "$MECH_PIDFILE" >"$dir/start.log" 2>&1 ||
            die "haproxy did not start (see $dir/start.log)"
        MECH_LABEL="HAProxy legacy -sf (no -x)"
        MECH_RELOAD="$(shell_join "$haproxy" -D -f "$cfg" -p) {pidfile} -sf {pid}"
        ;;
    haproxy-legacy-x)
        "$haproxy" -D -f "$cfg" -p "$MECH_PIDFILE" >"$dir/start.log" 2>&1 ||
            die "haproxy did not start (see $dir/start.log)"
        MECH_LABEL="HAProxy legacy -x stats.sock -sf"
        MECH_RELOAD="$(shell_join "$haproxy" -D -f "$cfg" -p) {pidfile} $(shell_join -x "$dir/stats.sock") -sf {pid}"
        ;;
    *) die "unknown mechanism: $name" ;;
    esac
    wait_until 5 test -s "$MECH_PIDFILE" || die "haproxy wrote no $MECH_PIDFILE"
}

start_demo() {
    local name=$1 dir=$2 port=$3 demo cmd
    demo=$(demo_bin)
    cmd=("$demo" --listen "127.0.0.1:$port")
    MECH_PIDFILE=$dir/demo.pid
    # The restarting demo keeps its own pid file current (and its command line names
    # $dir, so that every generation is found and stopped at the end).
    [[ $name != baton-restart ]] || cmd+=(--pidfile "$MECH_PIDFILE")
    # kill-restart.sh with no pid file yet only starts the server (in its own session,
    # output to demo.pid.log): the first start and every restart go the same way.
    bash "$BENCH_DIR/kill-restart.sh" "$MECH_PIDFILE" -- "${cmd[@]}" ||
        die "the demo did not start (see $MECH_PIDFILE.log)"
    case $name in
    kill-restart)
        MECH_LABEL="demo SIGKILL + restart"
        MECH_RELOAD="$(shell_join bash "$BENCH_DIR/kill-restart.sh") {pidfile} -- $(shell_join "${cmd[@]}")"
        ;;
    steady)
        MECH_LABEL="demo, no reloads"
        ;;
    baton-restart)
        MECH_LABEL="baton graceful restart"
        MECH_RELOAD="kill -HUP {pid}"
        ;;
    esac
}

start_baton_run() {
    local dir=$1 port=$2 demo baton
    demo=$(demo_bin)
    baton=$(target_dir)/dist/baton
    if [[ ! -x $baton ]]; then
        log "building baton (cargo build --profile dist -p baton-cli) ..." >&2
        (cd "$REPO_ROOT" && cargo build --profile dist -p baton-cli) >&2
    fi
    # `baton start` returns once the first worker serves; the master's command line
    # names $dir (--run-dir), so it is found and stopped at the end.
    "$baton" start --name web --run-dir "$dir" --listen "127.0.0.1:$port" \
        -- "$demo" --listen "127.0.0.1:$port" >"$dir/start.log" 2>&1 ||
        die "baton start failed (see $dir/start.log)"
    MECH_PIDFILE=$dir/web.pid
    MECH_LABEL="baton run reload"
    MECH_RELOAD="kill -HUP {pid}"
}

# The reload command with {pid} and {pidfile} filled in, as baton-bench does it
# (re-reading the pid file at each trigger).
mech_reload_cmd() {
    local line=$MECH_RELOAD pid
    pid=$(tr -dc 0-9 2>/dev/null <"$MECH_PIDFILE" || true)
    line=${line//\{pidfile\}/$MECH_PIDFILE}
    echo "${line//\{pid\}/$pid}"
}

# "PID(children...)" for the process the pid file names: shows masters and workers.
mech_procs() {
    local pid kids
    pid=$(tr -dc 0-9 2>/dev/null <"$MECH_PIDFILE" || true)
    [[ -n $pid ]] || { echo "none"; return 0; }
    kids=$(children "$pid" | tr '\n' ' ')
    echo "$pid(${kids% })"
}
