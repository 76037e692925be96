#!/usr/bin/env bash
# The tests, with everything they need, on a fresh Debian machine with a Rust toolchain:
#   bash scripts/test.sh            (as root: sudo bash scripts/test.sh)
#
# 1. Installs what is missing, from Debian's packages: chromium (the admin page is
#    tested in a headless browser), systemd (systemd-socket-activate), systemd-container
#    (systemd-nspawn, for the real-systemd tests), util-linux (setpriv and nsenter: a
#    second local user, the container), curl and python3.
# 2. cargo test --workspace --all-features: unit tests, and real processes, sockets,
#    signals, HTTP and TLS clients, a second user.
# 3. tests/systemd/run.sh on a real systemd 252 and 254 (PID 1 of a container): the
#    README's unit files under reloads, stops with requests in flight, stops during a
#    drain.
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

# What the tests start, they stop: no process of theirs and no private directory
# (/tmp/baton-*) may outlive the run.
leftovers() {
  pgrep -af "$PWD/target/|baton-cli/tests/pyworker.py|/examples/hello|/tmp/\.tmp[^ ]*/(app|hello|good)" |
    grep -v -e "^$$ " -e pgrep || true
}
dirs_before=$(ls -d /tmp/baton-* 2>/dev/null | sort || true)

echo "== cargo test --workspace --all-features"
cargo test --workspace --all-features

for _ in $(seq 20); do [ -z "$(leftovers)" ] && break; sleep 0.5; done
left=$(leftovers)
new_dirs=$(comm -13 <(echo "$dirs_before") <(ls -d /tmp/baton-* 2>/dev/null | sort || true) | grep . || true)
if [ -n "$left" ] || [ -n "$new_dirs" ]; then
  echo "scripts/test.sh: the tests left behind:" >&2
  [ -n "$left" ] && echo "$left" >&2
  [ -n "$new_dirs" ] && echo "$new_dirs" >&2
  exit 1
fi
echo "== the tests left no process and no /tmp/baton-* directory behind"

if [ "${BATON_SKIP_SYSTEMD:-}" = 1 ]; then
  echo "== real-systemd tests NOT RUN (BATON_SKIP_SYSTEMD=1)"
  exit 0
fi
# The binaries `cargo test` built: the demo, baton and baton-bench.
cargo build --workspace --all-features --examples --bins -q
for version in 252 254; do
  echo "== real systemd $version"
  tests/systemd/run.sh "$version" target/debug
done
echo "== all tests passed"
