#!/usr/bin/env bash
# A real systemd as PID 1 of a container of its own, for baton's real-systemd tests.
#
#   harness.sh boot 252|254   start it (252: this machine's Debian 12 systemd; 254:
#                             bookworm-backports, upgraded inside the container only)
#   harness.sh in CMD...      run CMD inside (all of the container's namespaces)
#   harness.sh put SRC DST    copy a file from here to DST inside
#   harness.sh stop           power it off and remove everything it made
#
# How: systemd-nspawn boots the container on an overlay whose lower layer is this
# machine's own root filesystem and whose upper layer is a tmpfs, so nothing is
# downloaded for 252 and nothing written inside outlives `stop`. The container shares
# this machine's network: a port opened inside is reachable at 127.0.0.1 here. It runs
# in a cgroup of its own (`baton-systemd`), so that `stop` can remove whatever is left.
# Root only; one container at a time.
set -euo pipefail

STATE=${BATON_SYSTEMD_STATE:-/run/baton-systemd}        # tmpfs: overlay, logs, PIDs
CACHE=${BATON_SYSTEMD_CACHE:-/var/cache/baton-systemd}  # .debs of systemd 254, kept
MACHINE=baton-systemd
CGROUP=baton-systemd
ROOT=$STATE/root

die() { echo "harness: $*" >&2; exit 1; }

leader() { # the container's PID 1, as seen here
  local nspawn
  nspawn=$(cat "$STATE/nspawn.pid" 2>/dev/null) || return 1
  kill -0 "$nspawn" 2>/dev/null || return 1
  pgrep -P "$nspawn" -x systemd | head -n1 | grep .
}

in_container() {
  local l
  l=$(leader) || die "the container is not running (harness.sh boot first)"
  exec nsenter -t "$l" -a -- /usr/bin/env -i \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}

join_cgroup() { # moves process $1 into our cgroup, in every hierarchy that has one
  local pid=$1 h
  for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified /sys/fs/cgroup; do
    if [ -f "$h/cgroup.procs" ]; then
      mkdir -p "$h/$CGROUP" && echo "$pid" > "$h/$CGROUP/cgroup.procs" 2>/dev/null || true
    fi
  done
}

boot() {
  local version=$1
  case "$version" in 252|254) ;; *) die "boot 252 or boot 254, not '$version'";; esac
  [ "$(id -u)" = 0 ] || die "must run as root (it mounts and boots a container)"
  if leader >/dev/null; then die "a container is running already (harness.sh stop first)"; fi
  command -v systemd-nspawn >/dev/null || {
    echo "harness: installing systemd-container (systemd-nspawn)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd-container >/dev/null
  }
  local t0=$SECONDS
  mkdir -p "$STATE" "$CACHE/archives"
  mountpoint -q "$STATE" || mount -t tmpfs -o mode=0755,size=4g baton-systemd-state "$STATE"
  mkdir -p "$STATE/upper" "$STATE/work" "$ROOT"
  mount -t overlay baton-systemd-root \
    -o "lowerdir=/,upperdir=$STATE/upper,workdir=$STATE/work" "$ROOT"
  # The container's own identity and a quiet default target; services of this machine
  # that must not start in there are masked (in the upper layer only).
  systemd-id128 new > "$ROOT/etc/machine-id"
  echo "$MACHINE" > "$ROOT/etc/hostname"
  ln -sf /lib/systemd/system/multi-user.target "$ROOT/etc/systemd/system/default.target"
  local u
  for u in nginx.service haproxy.service postgresql.service redis-server.service \
      memcached.service getty@tty1.service systemd-timesyncd.service e2scrub_reap.service \
      apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
      fstrim.timer man-db.timer; do
    ln -sf /dev/null "$ROOT/etc/systemd/system/$u"
  done
  local nspawn=(systemd-nspawn --quiet -D "$ROOT" -M "$MACHINE"
                --register=no --keep-unit --tmpfs=/tmp:mode=1777)
  if [ "$version" = 254 ]; then
    # systemd 254 from bookworm-backports, inside the overlay only; the .debs are kept
    # in the cache for the next boot. Debian's own archive, as this machine's apt has it.
    local mirror
    mirror=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' \
      /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
    mkdir -p "$ROOT/etc/apt/baton-sources"
    cat > "$ROOT/etc/apt/baton-sources/backports.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    rm -f "$ROOT/etc/apt/apt.conf.d/docker-clean"
    if ! "${nspawn[@]}" --pipe --bind="$CACHE/archives:/var/cache/apt/archives" /bin/sh -c '
        export DEBIAN_FRONTEND=noninteractive
        o="-o Dir::Etc::sourcelist=/dev/null -o Dir::Etc::sourceparts=/etc/apt/baton-sources"
        apt-get -qq $o update && apt-get -qq -y $o -t bookworm-backports install \
          systemd systemd-sysv libsystemd0 libudev1' > "$STATE/backports.log" 2>&1; then
      tail -n 20 "$STATE/backports.log" >&2
      die "cannot install systemd 254 from bookworm-backports"
    fi
  fi
  setsid "${nspawn[@]}" --console=read-only -b > "$STATE/console.log" 2>&1 < /dev/null &
  echo $! > "$STATE/nspawn.pid"
  join_cgroup "$(cat "$STATE/nspawn.pid")"
  local deadline=$((SECONDS + 120)) state=""
  until leader >/dev/null; do
    kill -0 "$(cat "$STATE/nspawn.pid")" 2>/dev/null && [ $SECONDS -lt $deadline ] || {
      tail -n 30 "$STATE/console.log" >&2; die "systemd-nspawn did not start"; }
    sleep 0.1
  done
  until state=$(nsenter -t "$(leader)" -a systemctl is-system-running 2>/dev/null) \
      && [ "$state" = running ] || [ "$state" = degraded ]; do
    [ $SECONDS -lt $deadline ] || {
      tail -n 30 "$STATE/console.log" >&2; die "the container's systemd did not come up ($state)"; }
    sleep 0.1
  done
  local got
  got=$(nsenter -t "$(leader)" -a systemctl --version | awk 'NR==1 {print $2}')
  [ "$got" = "$version" ] || die "asked for systemd $version, booted $got"
  echo "harness: systemd $got up in $((SECONDS - t0)) s (state: $state)" >&2
}

stop() {
  local nspawn
  nspawn=$(cat "$STATE/nspawn.pid" 2>/dev/null || true)
  if [ -n "$nspawn" ] && kill -0 "$nspawn" 2>/dev/null; then
    kill -TERM "$nspawn"    # nspawn asks the container's systemd to power off
    local i
    for i in $(seq 300); do kill -0 "$nspawn" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$nspawn" 2>/dev/null && kill -KILL "$nspawn" 2>/dev/null || true
  fi
  # Whatever is left in our cgroup (only what the container started).
  local f p
  for f in $(find /sys/fs/cgroup -path "*/$CGROUP/*" -name cgroup.procs 2>/dev/null) \
           $(find /sys/fs/cgroup -path "*/$CGROUP" -maxdepth 3 -name cgroup.procs 2>/dev/null); do
    for p in $(cat "$f" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
  done
  sleep 0.2
  mountpoint -q "$ROOT" && { umount "$ROOT" || umount -l "$ROOT"; }
  mountpoint -q "$STATE" && { umount "$STATE" || umount -l "$STATE"; }
  find /sys/fs/cgroup -depth -type d -path "*/$CGROUP*" -exec rmdir {} \; 2>/dev/null || true
  rmdir /run/systemd/nspawn/propagate/"$MACHINE" 2>/dev/null || true
  rm -f /run/systemd/nspawn/locks/machine-"$MACHINE" 2>/dev/null || true
  rm -rf "$STATE" 2>/dev/null || true
}

case "${1:-}" in
  boot) boot "${2:-}" ;;
  in) shift; in_container "$@" ;;
  put)
    leader >/dev/null || die "the container is not running"
    mkdir -p "$(dirname "$ROOT/$3")" && cp "$2" "$ROOT/$3" ;;
  stop) stop ;;
  *) sed -n '2,16p' "$0" >&2; exit 2 ;;
esac
