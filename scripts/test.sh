#!/usr/bin/env bash
# The tests, with everything they need, on a fresh Debian machine with a Rust toolchain:
#   bash scripts/test.sh            (as root: sudo bash scripts/test.sh)
#
# 1. Installs what is missing, from Debian's packages: chromium (the admin page is
#    tested in a headless browser), systemd (systemd-socket-activate), systemd-container
#    (systemd-nspawn, for the real-systemd tests), util-linux (setpriv and nsenter: a
#    second local user, the container), curl and python3.
# 2. cargo test --workspace --all-features --no-fail-fast: unit tests, and real
#    processes, sockets, signals, HTTP and TLS clients, a second user; then a check that
#    no process the tests started and no /tmp/baton-* directory they made outlived them.
# 3. tests/systemd/run.sh on a real systemd 252 and 254 (PID 1 of a container): the
#    unit files of docs/systemd/ and README's unit snippets through systemd-analyze
#    verify, then the unit files under reloads, stops with requests in flight, stops
#    during a drain.
#
# A failing part does not stop the others: every part runs, the end lists each one that
# failed, and the exit status is 0 only if none did.
#
# Root is needed to install packages, to act as another user and to boot a container.
# BATON_SKIP_SYSTEMD=1 leaves step 3 out and says so (it never passes silently).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh: run it as root (sudo bash scripts/test.sh): the tests install Debian packages, act as a second local user and boot systemd in a container" >&2
  exit 1
fi

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v systemd-socket-activate >/dev/null 2>&1 || need+=(systemd)
command -v systemd-nspawn >/dev/null 2>&1 || need+=(systemd-container)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
command -v nsenter >/dev/null 2>&1 || need+=(util-linux)
command -v curl >/dev/null 2>&1 || need+=(curl)
[ -x /usr/bin/python3 ] || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Every part that failed, for the summary at the end.
FAILED_PARTS=()
failed() { FAILED_PARTS+=("$*"); echo "== FAILED: $*" >&2; }

# What the tests start, they stop: no process of theirs and no private directory
# (/tmp/baton-*) may outlive the run. Only what the tests started counts: a demo the
# user runs in another terminal, or another checkout's tests, are not theirs. Two marks
# tell the tests' processes from the rest, since neither alone reaches all of them:
#  - BATON_TEST_RUN=<this run's id> in the environment, given to cargo only (not
#    exported: this script and its own commands do not carry it). Every descendant
#    inherits it, also across setsid (`baton start` daemonizes) and a re-parenting to
#    init; baton itself keeps the environment when it starts a next generation or a
#    worker, and /proc/PID/environ shows the environment a process was started with.
#  - the session: cargo test runs in a new session of its own (setsid below), which
#    every descendant stays in unless it calls setsid itself. That covers the processes
#    started with a cleared environment: systemd-socket-activate passes its child only
#    what it is told (--setenv), so the demo it starts has no BATON_TEST_RUN. No test
#    does both (a cleared environment and a new session).
# Zombies are left out: they run nothing and hold nothing; their parent, if it is one
# of the tests' processes, is listed itself.
RUN_ID=$(cat /proc/sys/kernel/random/uuid)
TESTS_SID=""   # the session of cargo test: its PID, once started
# The PIDs of the live processes the tests started.
our_pids() {
  local f p line state sid
  local -A marked=()
  for f in $(grep -lsxz "BATON_TEST_RUN=$RUN_ID" /proc/[0-9]*/environ || true); do
    p=${f#/proc/}
    marked[${p%/environ}]=1
  done
  for f in /proc/[0-9]*/stat; do
    p=${f#/proc/}
    p=${p%/stat}
    { read -r line < "$f"; } 2>/dev/null || continue     # gone meanwhile
    # The fields after "(comm)": state ppid pgrp session ...
    read -r state _ _ sid _ <<<"${line##*) }"
    [ "$state" = Z ] && continue
    # A process whose own PID is the session's is not of it: cargo has ended, so that
    # is a new process that got cargo's PID and made a session of its own.
    if [ -n "${marked[$p]:-}" ] || { [ "$sid" = "$TESTS_SID" ] && [ "$p" != "$TESTS_SID" ]; }; then
      echo "$p"
    fi
  done
}
# The tests' live processes, with their command lines.
leftovers() {
  local p
  for p in $(our_pids); do
    echo "$p $(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null)"
  done
}
# The private directories (/tmp/baton-*) the run made: those that appeared during it
# (a directory has no environment to mark), less those that a live process of someone
# else's uses. baton makes each with a socket in it (a notify or control socket), bound
# by the process that made it: a directory whose socket is held by processes that are
# all not the tests' (a demo of the user's made it meanwhile) is theirs. One whose
# socket nobody holds any more counts, as it did before.
private_dirs() { ls -d /tmp/baton-* 2>/dev/null | sort || true; }
held_by_others() { # DIR: true if its sockets are held, and only by others' processes
  local dir=$1 inodes inode holders="" p
  # /proc/net/unix: "Num RefCount Protocol Flags Type St Inode Path".
  inodes=$(awk -v d="$dir/" 'index($8, d) == 1 {print $7}' /proc/net/unix)
  [ -n "$inodes" ] || return 1
  for inode in $inodes; do
    holders+=" $(find /proc/[0-9]*/fd -lname "socket:\[$inode\]" 2>/dev/null | cut -d/ -f3 | sort -u | tr '\n' ' ')"
  done
  [ -n "${holders// /}" ] || return 1
  local ours=" $(our_pids | tr '\n' ' ') "
  for p in $holders; do
    [[ "$ours" == *" $p "* ]] && return 1
  done
  return 0
}
dirs_before=$(private_dirs)

echo "== cargo test --workspace --all-features --no-fail-fast"
# In a session of its own (see above); `&` and wait so that this script can pass an
# interrupt on: the tests have no terminal any more, so Ctrl-C (or a TERM or HUP of this
# script) is sent to their process group as the terminal would have, and the run stops.
# (A background command of a script is no process group leader: setsid(1) does not fork,
# and $! is cargo's PID, which is its session's ID. Bash starts a background command
# with SIGINT and SIGQUIT ignored, which every test process would inherit, Python
# workers among them: `env --default-signal` gives them back their default, as a
# command in the foreground has them.)
BATON_TEST_RUN=$RUN_ID setsid env --default-signal=INT,QUIT \
  cargo test --workspace --all-features --no-fail-fast &
TESTS_SID=$!
interrupted=""
trap 'interrupted=1; kill -INT -- "-$TESTS_SID" 2>/dev/null || true' INT TERM HUP
tests_status=0
while :; do
  wait "$TESTS_SID" && tests_status=0 || tests_status=$?
  # A trapped signal ends `wait` early: wait again until cargo has ended.
  kill -0 "$TESTS_SID" 2>/dev/null || break
done
trap - INT TERM HUP
if [ -n "$interrupted" ]; then
  echo "scripts/test.sh: interrupted: the tests were stopped; nothing more is run" >&2
  exit 130
fi
[ "$tests_status" = 0 ] || failed "cargo test (exit status $tests_status: see the failures above, before 'error: N targets failed')"

# Bounded: 20 looks, 0.5 s apart, for what is still ending after cargo test.
for _ in $(seq 20); do [ -z "$(leftovers)" ] && break; sleep 0.5; done
left=$(leftovers)
new_dirs=""
for d in $(comm -13 <(echo "$dirs_before") <(private_dirs)); do
  if held_by_others "$d"; then
    echo "== not the tests': $d (made meanwhile by a process the tests did not start)"
  else
    new_dirs+="$d"$'\n'
  fi
done
new_dirs=${new_dirs%$'\n'}
if [ -n "$left" ] || [ -n "$new_dirs" ]; then
  echo "scripts/test.sh: the tests left behind:" >&2
  [ -n "$left" ] && echo "$left" >&2
  [ -n "$new_dirs" ] && echo "$new_dirs" >&2
  failed "leftovers: processes or /tmp/baton-* directories the tests left behind (listed above)"
else
  echo "== the tests left no process and no /tmp/baton-* directory behind"
fi

systemd_note=""
if [ "${BATON_SKIP_SYSTEMD:-}" = 1 ]; then
  systemd_note="real-systemd tests NOT RUN (BATON_SKIP_SYSTEMD=1)"
  echo "== $systemd_note"
# The binaries `cargo test` built: the demo, baton and baton-bench.
elif ! cargo build --workspace --all-features --examples --bins -q; then
  failed "cargo build of the binaries for the real-systemd tests (so they did not run)"
else
  for version in 252 254; do
    echo "== real systemd $version"
    tests/systemd/run.sh "$version" target/debug || failed "real systemd $version (tests/systemd/run.sh $version: its FAIL lines above)"
  done
fi

echo
if [ ${#FAILED_PARTS[@]} -gt 0 ]; then
  echo "== FAILED (${#FAILED_PARTS[@]}):" >&2
  printf '   - %s\n' "${FAILED_PARTS[@]}" >&2
  [ -z "$systemd_note" ] || echo "== $systemd_note" >&2
  exit 1
fi
if [ -n "$systemd_note" ]; then
  echo "== all tests that ran passed; $systemd_note"
else
  echo "== all tests passed"
fi
