#!/usr/bin/env bash
# Fails when baton's serving path costs more instructions than its limit, against plain
# hyper-util measured in the same run (bench/callgrind.sh, both modes). Run by hand
# before each release (about 5 minutes) and quote its output in the release notes.
#
# Usage: bash bench/check-cost.sh      (KEEP_ALIVE_LIMIT=1.03, NEW_CONN_LIMIT=1.05)
set -euo pipefail
cd "$(dirname "$0")/.."
keep_alive_limit=${KEEP_ALIVE_LIMIT:-1.03}
new_conn_limit=${NEW_CONN_LIMIT:-1.05}
status=0
check() { # MODE LIMIT [ENV...]
  local mode=$1 limit=$2 out ratio
  shift 2
  echo "== $mode (limit ${limit}x)"
  out=$(env MODE="$mode" "$@" bash bench/callgrind.sh)
  echo "$out"
  ratio=$(echo "$out" | sed -n 's/^baton \/ plain instructions per request.*: //p')
  [ -n "$ratio" ] || { echo "FAIL: no ratio in the output"; status=1; return; }
  if python3 -c "import sys; sys.exit(0 if $ratio <= $limit else 1)"; then
    echo "ok: $ratio <= $limit"
  else
    echo "FAIL: baton costs ${ratio}x plain hyper-util per request ($mode), over the limit of ${limit}x"
    status=1
  fi
}
check keep-alive "$keep_alive_limit"
check new-conn "$new_conn_limit" N1=2000 N2=10000
echo "commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')"
exit $status
