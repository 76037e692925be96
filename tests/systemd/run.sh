#!/usr/bin/env bash
# baton under a real systemd: the unit files of docs/systemd/, as the README gives them
# (only the port changes), on systemd 252 or 254 in a container (harness.sh).
#
#   tests/systemd/run.sh 252|254 [BINDIR]
#
# BINDIR holds `hello`, `baton` and `baton-bench` (default: target/debug, with hello
# from target/debug/examples). For each unit: reloads under load (0 failed, the main PID
# follows each new generation where it changes), a stop with a request in flight (it is
# answered, the unit ends `Result=success`), and a reload followed by a stop while the
# old generation still drains (the same). First, every unit file of docs/systemd/ and
# every unit snippet of README.md through `systemd-analyze verify` (units.sh). Exit
# status 0 only if every check passed.
set -euo pipefail
cd "$(dirname "$0")/../.."

VERSION=${1:?usage: run.sh 252|254 [BINDIR]}
BIN=${2:-target/debug}
HELLO=$BIN/hello
[ -x "$HELLO" ] || HELLO=$BIN/examples/hello
H=tests/systemd/harness.sh
for b in "$HELLO" "$BIN/baton" "$BIN/baton-bench"; do
  [ -x "$b" ] || { echo "run.sh: $b is missing (cargo build first)" >&2; exit 1; }
done

FAILED=0
CHECKS=0
log() { printf '[systemd %s] %s\n' "$VERSION" "$*"; }
pass() { CHECKS=$((CHECKS + 1)); log "PASS $*"; }
fail() { CHECKS=$((CHECKS + 1)); FAILED=$((FAILED + 1)); log "FAIL $*"; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

cleanup() { "$H" stop >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup
"$H" boot "$VERSION"

# The programs, where the unit files expect them.
"$H" put "$HELLO" /usr/local/bin/hello
"$H" put "$BIN/baton" /usr/local/bin/baton
"$H" put crates/baton-cli/tests/pyworker.py /usr/local/lib/baton-tests/pyworker.py
# From here on a failing command is a failed check, not the end of the run.
set +e

inside() { timeout 120 "$H" in "$@"; }
cursor() { inside journalctl --show-cursor -n 0 -q -o cat | sed -n 's/^-- cursor: //p'; }
main_pid() { inside systemctl show -p MainPID --value "$1"; }

# Installs unit file $1 (from docs/systemd or a path) as $2 with the port replaced.
install_unit() {
  local src=$1 name=$2 port=$3
  sed "s/127\.0\.0\.1:8080/127.0.0.1:$port/" "$src" > "$STATE_DIR/$name"
  "$H" put "$STATE_DIR/$name" "/etc/systemd/system/$name"
}
STATE_DIR=$(mktemp -d)
trap 'cleanup; rm -rf "$STATE_DIR"' EXIT

# 0. The unit files as this systemd parses them, before any is run: every unit snippet
#    of README.md and every file of docs/systemd/ through `systemd-analyze verify`, no
#    warning about them allowed (a comment after a value is "ignoring"d with exit 0);
#    each snippet the same as a tested file (units.sh).
. tests/systemd/units.sh
check_units README.md

wait_answers() { # port, bounded
  local i
  for i in $(seq 200); do
    curl -fsS -m 2 "http://127.0.0.1:$1/" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}

# `systemctl stop` (or the end of a unit) as systemd saw it, from its journal since
# cursor $2: Result=success, or what it said instead; and no forced close by the app.
check_stop() {
  local unit=$1 since=$2 what=$3 journal
  journal=$(inside journalctl --after-cursor "$since" -o cat --no-pager)
  if grep -q "$unit: Failed with result" <<<"$journal" || ! grep -q "$unit: Deactivated successfully" <<<"$journal"; then
    fail "$what: the unit did not stop cleanly: $(grep "$unit:" <<<"$journal" | tail -n 5 | tr '\n' '|')"
  else
    pass "$what: Result=success"
  fi
  if grep -Eq "hammer|forced [1-9]|killing the workers|Killing process" <<<"$journal"; then
    fail "$what: something was forced or killed: $(grep -E "hammer|forced [1-9]|killing|Killing" <<<"$journal" | head -n 3 | tr '\n' '|')"
  fi
}

# A request in flight (GET /sleep?secs=$2) in the background; its answer goes to $3,
# its PID to $REQ.
request_in_flight() {
  local port=$1 secs=$2 out=$3
  curl -sS -m 30 -o "$out" -w '%{http_code}' "http://127.0.0.1:$port/sleep?secs=$secs" > "$out.code" 2>"$out.err" &
  REQ=$!
}

check_answer() {
  local pid=$1 out=$2 what=$3
  if wait "$pid" && [ "$(cat "$out.code")" = 200 ] && grep -q "slept" "$out"; then
    pass "$what: the request in flight was answered ($(cat "$out"))"
  else
    fail "$what: the request in flight got no full answer: code $(cat "$out.code" 2>/dev/null) $(cat "$out.err" 2>/dev/null) $(cat "$out" 2>/dev/null)"
  fi
}

# Reloads under load: keep-alive clients that trigger the reloads, and clients opening
# a new connection per request beside them; 0 failed in both.
reloads_under_load() {
  local unit=$1 port=$2 reloads=$3 report=$STATE_DIR/$unit.bench
  local t=$(( reloads + 2 ))s
  "$BIN/baton-bench" "http://127.0.0.1:$port/pid" --pid-body -c 2 --mode new-conn -d "$t" \
    --timeout 10s --quiet > "$report.nc" 2>&1 &
  local nc=$!
  if "$BIN/baton-bench" "http://127.0.0.1:$port/pid" --pid-body -c 4 -d "$t" --timeout 10s \
      --reload "$H in systemctl reload $unit" --reloads "$reloads" --reload-every 1s \
      --quiet > "$report.ka" 2>&1; then
    pass "$unit: $reloads reloads under keep-alive load, 0 failed ($(grep -m1 -E '^requests|ok' "$report.ka" | head -c 120))"
  else
    fail "$unit: reloads under keep-alive load: $(tail -n 15 "$report.ka" | tr '\n' '|')"
  fi
  if wait "$nc"; then
    pass "$unit: beside them, new connections per request, 0 failed"
  else
    fail "$unit: new connections during the reloads: $(tail -n 15 "$report.nc" | tr '\n' '|')"
  fi
}

# The three scenarios for one unit (started by $start, a service or socket unit).
scenarios() {
  local unit=$1 port=$2 start=$3 reloads=${4:-5} c req out
  inside systemctl daemon-reload
  if ! inside systemctl start "$start" || ! wait_answers "$port"; then
    fail "$unit: does not answer after start: $(inside systemctl status "$unit" --no-pager 2>&1 | tail -n 10 | tr '\n' '|')"
    return
  fi
  pass "$unit: started, answers"
  reloads_under_load "$unit" "$port" "$reloads"
  # Stop with a request in flight.
  out=$STATE_DIR/$unit.sleep
  request_in_flight "$port" 2 "$out"
  req=$REQ
  sleep 0.5
  c=$(cursor)
  inside systemctl stop "$unit"
  check_answer "$req" "$out" "$unit: stop"
  check_stop "$unit" "$c" "$unit: stop with a request in flight"
  # Reload, then stop while the old generation drains.
  inside systemctl start "$start" || { fail "$unit: does not start again"; return; }
  wait_answers "$port" || { fail "$unit: does not answer after the second start"; return; }
  local first master
  first=$(curl -fsS -m 2 "http://127.0.0.1:$port/pid")
  master=$(main_pid "$unit")
  out=$STATE_DIR/$unit.sleep2
  request_in_flight "$port" 3 "$out"
  req=$REQ
  sleep 0.5
  inside systemctl reload "$unit"
  local i now=""
  for i in $(seq 100); do
    now=$(curl -fsS -m 2 "http://127.0.0.1:$port/pid" 2>/dev/null || true)
    [ -n "$now" ] && [ "$now" != "$first" ] && break
    sleep 0.1
  done
  [ "$now" != "$first" ] || fail "$unit: the reload brought no new generation"
  # The main PID: the new generation where the app restarts itself, the master's
  # unchanged PID behind a master.
  local main expected
  main=$(main_pid "$unit")
  if [ "$unit" = hello.service ]; then expected=$now; else expected=$master; fi
  for i in $(seq 50); do
    [ "$main" = "$expected" ] && break
    sleep 0.1
    main=$(main_pid "$unit")
  done
  if [ "$main" = "$expected" ]; then
    pass "$unit: MainPID is $main after the reload"
  else
    fail "$unit: MainPID is $main after the reload, expected $expected"
  fi
  c=$(cursor)
  inside systemctl stop "$unit"
  check_answer "$req" "$out" "$unit: reload, then stop during the drain"
  check_stop "$unit" "$c" "$unit: reload, then stop during the drain"
  if [ "$start" != "$unit" ]; then inside systemctl stop "$start"; fi
}

case "$VERSION" in
  252) SUFFIX=252 ;;
  *) SUFFIX=254 ;;
esac

# 1. The demo restarting itself (its new generation becomes the main PID).
P=$(free_port)
install_unit "docs/systemd/hello-$SUFFIX.service" hello.service "$P"
scenarios hello.service "$P" hello.service
# 2. `baton run` (stable PID), as recommended (KillMode=mixed) ...
P=$(free_port)
install_unit "docs/systemd/baton-run-$SUFFIX.service" baton-run.service "$P"
scenarios baton-run.service "$P" baton-run.service
# ... and with systemd's default KillMode=control-group (SIGTERM to master and worker).
P=$(free_port)
grep -v '^KillMode=' "docs/systemd/baton-run-$SUFFIX.service" > "$STATE_DIR/cg.template"
install_unit "$STATE_DIR/cg.template" baton-run-cg.service "$P"
scenarios baton-run-cg.service "$P" baton-run-cg.service 3
# 3. The app as its own master.
P=$(free_port)
install_unit docs/systemd/hello-master.service hello-master.service "$P"
scenarios hello-master.service "$P" hello-master.service 3
# 4. A .socket unit in front of `baton run` without --listen.
P=$(free_port)
install_unit docs/systemd/web.socket web.socket "$P"
install_unit docs/systemd/web.service web.service "$P"
scenarios web.service "$P" web.socket 3
# 5. A worker that ends by the stop signal itself after draining (as many runtimes do):
#    the master ends by it too, a clean stop for systemd.
P=$(free_port)
sed -e "s#-- /usr/local/bin/hello#--ready delay=300ms -- python3 /usr/local/lib/baton-tests/pyworker.py#" \
    -e 's#^\[Service\]#[Service]\nEnvironment=PYWORKER_RERAISE=1#' \
    "docs/systemd/baton-run-$SUFFIX.service" > "$STATE_DIR/py.template"
install_unit "$STATE_DIR/py.template" py.service "$P"
inside systemctl daemon-reload
inside systemctl start py.service
if wait_answers "$P"; then
  c=$(cursor)
  inside systemctl stop py.service
  check_stop py.service "$c" "py.service: a worker that re-raises SIGTERM"
else
  fail "py.service: does not answer"
fi

# 6. The FD store: the listening socket outlives the process. Under clients opening a
#    new connection per request: 3 `systemctl restart` and 2 SIGKILLs of the main
#    process (Restart=on-failure), one every 3 s. No connection may be refused: the
#    socket stays open in systemd's store, clients wait in its queue. Requests a
#    SIGKILL cuts in flight are counted apart (nothing can save those); a restart,
#    graceful, may fail none.
fdstore() {
  local unit=$1 port=$2 control=${3:-} report=$STATE_DIR/$1.fdstore
  inside systemctl daemon-reload
  if ! inside systemctl start "$unit" || ! wait_answers "$port"; then
    fail "$unit: does not answer after start"
    return
  fi
  cat > "$STATE_DIR/$unit.action" <<ACT
#!/bin/sh
n=\$(cat "$STATE_DIR/$unit.n" 2>/dev/null || echo 0); echo \$((n + 1)) > "$STATE_DIR/$unit.n"
case \$n in
  1|3) exec timeout 60 "$PWD/$H" in sh -c 'kill -KILL \$(systemctl show -p MainPID --value $unit)' ;;
  *) exec timeout 60 "$PWD/$H" in systemctl restart $unit ;;
esac
ACT
  chmod +x "$STATE_DIR/$unit.action"
  "$BIN/baton-bench" "http://127.0.0.1:$port/pid" --pid-body -c 4 --mode new-conn -d 19s \
    --timeout 10s --reload "$STATE_DIR/$unit.action" --reloads 5 --reload-every 3s --window 3s \
    --max-failures 1000000 --json "$report.json" --quiet > "$report" 2>&1
  # Per trigger (restart, SIGKILL, restart, SIGKILL, restart), the failed requests that
  # started in the 3 s from it to the next.
  local counts
  counts=$(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
f = r["failures"]
t = [x["failed_requests"] for x in r["reloads"]["triggers"]]
restarts, kills = sum(t[0::2]), sum(t[1::2])
print(r["reloads"]["count"], r["requests"], sum(f.values()), f["refused"], restarts, kills,
      " ".join(f"{k}={v}" for k, v in f.items() if v))
' "$report.json" 2>/dev/null)
  local reloads requests failed refused restarts kills classes
  read -r reloads requests failed refused restarts kills classes <<<"$counts"
  if [ -n "$control" ]; then
    # The control: the same unit without a store. Clients must be refused, or this
    # scenario could not tell a kept socket from a lucky run.
    if [ -n "$counts" ] && [ "$reloads" = 5 ] && [ "$refused" -gt 0 ]; then
      pass "$unit (control, no FileDescriptorStoreMax=): $refused refused of $requests, as expected without the store"
    else
      fail "$unit (control): expected refused connections without the store: ${counts:-no report}"
    fi
  elif [ -n "$counts" ] && [ "$reloads" = 5 ] && [ "$refused" = 0 ] && [ "$restarts" = 0 ] && [ "$requests" -gt 0 ]; then
    pass "$unit: 3 restarts + 2 SIGKILLs under new connections: 0 refused of $requests; 0 failed at the restarts, $kills cut in flight by the SIGKILLs ($failed failed in all${classes:+: $classes})"
  else
    fail "$unit: 3 restarts + 2 SIGKILLs: ${counts:-no report} $(tail -n 5 "$report" | tr '\n' '|')"
  fi
  FIGURES+=("$unit|$requests requests|$refused refused|$restarts failed at restarts|$kills at SIGKILLs|${classes:-none}")
  inside systemctl stop "$unit"
}
FIGURES=()
P=$(free_port)
install_unit "docs/systemd/hello-$SUFFIX.service" hello.service "$P"
fdstore hello.service "$P"
# 6b. A listener moved to another port in the unit file: the next start gives the
#     socket kept for it back to systemd (FDSTOREREMOVE=1) and binds the new address;
#     the old port refuses connections (nothing keeps it open), the store holds one.
fdstore_moved() {
  local unit=$1 old=$2 new c stored code
  inside systemctl daemon-reload
  if ! inside systemctl start "$unit" || ! wait_answers "$old"; then
    fail "$unit: does not answer after start"
    return
  fi
  stored=$(inside systemctl show -p NFileDescriptorStore --value "$unit")
  new=$(free_port)
  install_unit "docs/systemd/hello-$SUFFIX.service" "$unit" "$new"
  inside systemctl daemon-reload
  c=$(cursor)
  inside systemctl restart "$unit"
  if ! wait_answers "$new"; then
    fail "$unit: moved from port $old to $new: does not answer on $new; $(inside journalctl --after-cursor "$c" -o cat --no-pager | tail -n 4 | tr '\n' '|')"
    inside systemctl stop "$unit"
    return
  fi
  code=0
  curl -sS -m 3 -o /dev/null "http://127.0.0.1:$old/" 2>/dev/null || code=$?
  local after
  after=$(inside systemctl show -p NFileDescriptorStore --value "$unit")
  if [ "$stored" = 1 ] && [ "$code" = 7 ] && [ "$after" = 1 ] &&
    inside journalctl --after-cursor "$c" -o cat --no-pager | grep -q "removed from the store"; then
    pass "$unit: moved from port $old to $new: answers on $new, the old port refuses (curl exit 7), one socket stored before and after"
  else
    fail "$unit: moved from port $old to $new: stored before $stored, after $after, old port curl exit $code (7 = refused)"
  fi
  inside systemctl stop "$unit"
}
fdstore_moved hello.service "$P"
P=$(free_port)
grep -v '^FileDescriptorStoreMax=' "docs/systemd/hello-$SUFFIX.service" > "$STATE_DIR/nostore.template"
install_unit "$STATE_DIR/nostore.template" nostore.service "$P"
fdstore nostore.service "$P" control
P=$(free_port)
install_unit "docs/systemd/baton-run-$SUFFIX.service" baton-run.service "$P"
fdstore baton-run.service "$P"
P=$(free_port)
install_unit docs/systemd/web.socket web.socket "$P"
install_unit docs/systemd/web.service web.service "$P"
inside systemctl start web.socket
fdstore web.service "$P"
inside systemctl stop web.socket

# 7. A long drain under TimeoutStopSec=10: 8 requests ending 5, 10, ... 40 s after the
#    stop. Extended while requests finish (EXTEND_TIMEOUT_USEC), it completes: every
#    request answered, Result=success. Then a drain that stops progressing (one
#    request that would take 300 s): systemd's timeout cuts it, about 15 s after its
#    last progress, not at the drain deadline (120 s).
long_drain() {
  local unit=$1 port=$2 step=$3 i c pids=() outs=() t0 took journal
  inside systemctl daemon-reload
  if ! inside systemctl start "$unit" || ! wait_answers "$port"; then
    fail "$unit: does not answer after start"
    return
  fi
  for i in 1 2 3 4 5 6 7 8; do
    curl -sS -m 120 -o "$STATE_DIR/$unit.long$i" -w '%{http_code}' \
      "http://127.0.0.1:$port/sleep?secs=$((i * step))" > "$STATE_DIR/$unit.long$i.code" 2>/dev/null &
    pids+=($!)
  done
  sleep 1
  c=$(cursor)
  t0=$(date +%s)
  inside systemctl stop "$unit"
  took=$(( $(date +%s) - t0 ))
  local answered=0
  for i in 1 2 3 4 5 6 7 8; do
    wait "${pids[$((i - 1))]}" && [ "$(cat "$STATE_DIR/$unit.long$i.code")" = 200 ] && answered=$((answered + 1))
  done
  journal=$(inside journalctl --after-cursor "$c" -o cat --no-pager)
  if [ "$answered" = 8 ] && grep -q "$unit: Deactivated successfully" <<<"$journal" && ! grep -q "timed out" <<<"$journal"; then
    pass "$unit: a ${took}s drain under TimeoutStopSec=10 completed, 8 of 8 answered"
  else
    fail "$unit: the ${took}s drain under TimeoutStopSec=10: $answered of 8 answered; $(grep "$unit" <<<"$journal" | tail -n 4 | tr '\n' '|')"
  fi
  FIGURES+=("$unit long drain|${took}s|$answered of 8 answered")
  inside systemctl start "$unit"
  wait_answers "$port" || { fail "$unit: does not answer after the second start"; return; }
  curl -sS -m 400 "http://127.0.0.1:$port/sleep?secs=300" >/dev/null 2>&1 &
  local stuck=$!
  sleep 1
  c=$(cursor)
  t0=$(date +%s)
  inside systemctl stop "$unit"
  took=$(( $(date +%s) - t0 ))
  kill "$stuck" 2>/dev/null; wait "$stuck" 2>/dev/null
  journal=$(inside journalctl --after-cursor "$c" -o cat --no-pager)
  if grep -q "timed out" <<<"$journal" && [ "$took" -ge 9 ] && [ "$took" -le 40 ]; then
    pass "$unit: a drain without progress was cut by systemd's timeout after ${took}s"
  else
    fail "$unit: the stuck drain ended after ${took}s: $(grep "$unit" <<<"$journal" | tail -n 4 | tr '\n' '|')"
  fi
  FIGURES+=("$unit stuck drain|cut after ${took}s")
}
P=$(free_port)
sed -e 's/^TimeoutStopSec=.*/TimeoutStopSec=10/' -e 's#hello --listen 127.0.0.1:8080#hello --listen 127.0.0.1:8080 --drain-timeout 120s#' \
  "docs/systemd/hello-$SUFFIX.service" > "$STATE_DIR/long.template"
install_unit "$STATE_DIR/long.template" long.service "$P"
long_drain long.service "$P" 5
P=$(free_port)
sed -e 's/^TimeoutStopSec=.*/TimeoutStopSec=10/' -e 's#baton run #baton run --drain-timeout 120s #' \
  -e 's#-- /usr/local/bin/hello$#-- /usr/local/bin/hello --drain-timeout 120s#' \
  "docs/systemd/baton-run-$SUFFIX.service" > "$STATE_DIR/longrun.template"
install_unit "$STATE_DIR/longrun.template" longrun.service "$P"
long_drain longrun.service "$P" 5

log "figures:"
for f in "${FIGURES[@]}"; do log "  $f"; done
log "$CHECKS checks, $FAILED failed"
[ "$FAILED" = 0 ]
