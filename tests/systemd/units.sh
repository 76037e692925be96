#!/usr/bin/env bash
# The unit files as systemd reads them: every unit snippet of README.md (a fenced block
# with a [Unit], [Service], [Socket] or [Install] header) and every file of
# docs/systemd/, through `systemd-analyze verify` inside the container of harness.sh.
#
# Why read what verify prints and not only its status: systemd allows no comment after
# a value (`KillMode=mixed  # ...`). It logs "Failed to parse kill mode, ignoring", keeps
# the default, and verify still exits 0: a user pasting such a snippet silently gets
# KillMode=control-group and loses requests.
#
# What fails a unit: verify's exit status (given --recursive-errors=no, 252 and 254 do
# exit 1 on such a warning; without it, 0), or any line it prints about the unit itself:
# `/path/NAME:LINE: ...` (a line of the file: "Failed to parse", "Unknown key name",
# "Unknown section", a removed option ...) or `NAME: ...` (the unit as a whole: "Command
# ... is not executable", "has no ExecStart="). Lines about other units (systemd's own,
# loaded as dependencies) are not the file's fault: shown as notes, not failed.
#
# Also: each README snippet must agree with a file of docs/systemd/ (every setting of
# the snippet, comments aside, is in that file), since those files are what run.sh
# tests under reloads and stops.
#
# Sourced by run.sh (which gives log, pass, fail, inside, $VERSION and $STATE_DIR), or
# on its own against a container already booted (harness.sh boot 252|254), with the
# programs the units name copied in from BINDIR (default target/debug) as run.sh does:
#   tests/systemd/units.sh 252|254 [README [BINDIR]]   (exit 0: every check passed)

# Where the files go inside the container: not /tmp (a tmpfs of the container's own,
# which harness.sh put cannot reach) and not /etc/systemd/system (nothing here is meant
# to be started).
UNITS_DIR=/usr/local/lib/baton-tests/verify

# Writes the unit snippets of markdown file $1 into directory $2 as readme-N.service
# (readme-N.socket for one with a [Socket] section), and prints one line per snippet:
# NAME, its line in $1, and the files of docs/systemd/ it agrees with (comma-separated,
# "-" for none).
readme_snippets() {
  python3 - "$1" "$2" docs/systemd <<'PY'
import pathlib, re, sys, textwrap
src, out, docs = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
header = re.compile(r"\s*\[(Unit|Service|Socket|Install)\]\s*")

def settings(text):
    """(section, key, value) of every setting; comment lines dropped, as systemd does."""
    got, section = set(), None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line
        elif "=" in line:
            k, v = line.split("=", 1)
            got.add((section, k.strip(), v.strip()))
    return got

tested = {f.name: settings(f.read_text()) for f in sorted(docs.iterdir()) if f.is_file()}
fence, start, block, n = None, 0, [], 0
for i, line in enumerate(open(src, encoding="utf-8").read().split("\n"), 1):
    if fence is None:
        m = re.match(r"\s*(`{3,}|~{3,})", line)
        if m:
            fence, start, block = m.group(1), i, []
    elif re.fullmatch(r"\s*" + re.escape(fence[0]) + r"{%d,}\s*" % len(fence), line):
        if any(header.fullmatch(l) for l in block):
            n += 1
            text = textwrap.dedent("\n".join(block)) + "\n"
            kind = "socket" if re.search(r"(?m)^\s*\[Socket\]\s*$", text) else "service"
            name = f"readme-{n}.{kind}"
            (out / name).write_text(text)
            mine = settings(text)
            agree = [f for f, s in tested.items() if mine <= s]
            print(name, start, ",".join(agree) or "-")
        fence = None
    else:
        block.append(line)
PY
}

# verify_unit WHAT PATH: PATH (inside the container) through systemd-analyze verify.
verify_unit() {
  local what=$1 path=$2 name out rc mine others
  name=${path##*/}
  out=$(inside systemd-analyze verify --man=no --recursive-errors=no "$path" 2>&1 </dev/null)
  rc=$?
  # About this unit: "/dir/NAME:LINE: ..." or "NAME: ..." (not "other-NAME: ...").
  local me="(^|[/[:space:]])${name//./\\.}:"
  mine=$(grep -E -- "$me" <<<"$out")
  others=$(grep -Ev -- "$me" <<<"$out" | grep .)
  [ -z "$others" ] || log "  note, $what: verify said about other units: $(tr '\n' '|' <<<"$others")"
  if [ "$rc" = 0 ] && [ -z "$mine" ]; then
    pass "$what: systemd-analyze verify: no warning"
  else
    fail "$what: systemd-analyze verify (exit $rc): $(tr '\n' '|' <<<"${mine:-$out}")"
  fi
}

# check_units README: every README snippet and every file of docs/systemd/.
check_units() {
  local readme=${1:-README.md} dir=$STATE_DIR/verify line name at agree n=0 f
  rm -rf "$dir" && mkdir -p "$dir/readme" "$dir/docs"
  # The README's snippets (checked as written, except where this systemd lacks a
  # setting the README gives for a later one, below).
  local listing
  if ! listing=$(readme_snippets "$readme" "$dir/readme"); then
    fail "$readme: cannot extract its unit snippets"
    return
  fi
  # (The list on descriptor 3: what runs in the loop must not eat it from stdin.)
  while read -r -u 3 name at agree; do
    [ -n "$name" ] || continue
    n=$((n + 1))
    if [ "$agree" = - ]; then
      fail "$readme:$at ($name): agrees with no file of docs/systemd/ (a setting differs or is missing there): $(grep -v '^#' "$dir/readme/$name" | tr '\n' '|')"
    else
      pass "$readme:$at ($name): agrees with docs/systemd/ ($agree)"
    fi
    # 252 has no Type=notify-reload (the README says to use Type=notify with an
    # ExecReload= there): on 252 that line is checked as Type=notify, so that every
    # other line of the snippet is verified on 252 too (same line numbers).
    if [ "$VERSION" = 252 ] && grep -q '^Type=notify-reload$' "$dir/readme/$name"; then
      sed -i 's#^Type=notify-reload$#Type=notify#' "$dir/readme/$name"
      log "  $readme:$at ($name): on 252 with Type=notify for Type=notify-reload (253 and later)"
    fi
    # A socket unit starts the service of its name: give it one, so that verify
    # judges the snippet and not a missing companion.
    if [ "${name##*.}" = socket ]; then
      printf '[Service]\nExecStart=/usr/local/bin/hello\n' > "$dir/readme/${name%.socket}.service"
      "$H" put "$dir/readme/${name%.socket}.service" "$UNITS_DIR/readme/${name%.socket}.service"
    fi
    "$H" put "$dir/readme/$name" "$UNITS_DIR/readme/$name"
    verify_unit "$readme:$at ($name)" "$UNITS_DIR/readme/$name"
  done 3<<<"$listing"
  # Without a snippet found, the check above checked nothing: the extraction broke.
  if [ "$n" = 0 ]; then
    fail "$readme: no unit snippet found (a fenced block with a [Service] or other unit section)"
  fi
  # The tested files, all in one directory (web.service requires web.socket: verify
  # finds it beside the file it was given). A file for one systemd version (-252, -254)
  # is verified on that version; the others on both.
  for f in docs/systemd/*; do
    "$H" put "$f" "$UNITS_DIR/docs/${f##*/}"
  done
  for f in docs/systemd/*; do
    name=${f##*/}
    case "$name" in
      *-252.*) [ "$VERSION" = 252 ] || continue ;;
      *-254.*) [ "$VERSION" != 252 ] || continue ;;
    esac
    verify_unit "$f" "$UNITS_DIR/docs/$name"
  done
}

# On its own: the helpers run.sh would give.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -uo pipefail
  cd "$(dirname "$0")/../.."
  VERSION=${1:?usage: units.sh 252|254 [README] (with the container booted: harness.sh boot)}
  H=tests/systemd/harness.sh
  FAILED=0
  CHECKS=0
  log() { printf '[systemd %s] %s\n' "$VERSION" "$*"; }
  pass() { CHECKS=$((CHECKS + 1)); log "PASS $*"; }
  fail() { CHECKS=$((CHECKS + 1)); FAILED=$((FAILED + 1)); log "FAIL $*"; }
  inside() { timeout 120 "$H" in "$@"; }
  BIN=${3:-target/debug}
  HELLO=$BIN/hello
  [ -x "$HELLO" ] || HELLO=$BIN/examples/hello
  "$H" put "$HELLO" /usr/local/bin/hello || exit 1
  "$H" put "$BIN/baton" /usr/local/bin/baton || exit 1
  STATE_DIR=$(mktemp -d)
  trap 'rm -rf "$STATE_DIR"' EXIT
  check_units "${2:-README.md}"
  log "$CHECKS checks, $FAILED failed"
  [ "$FAILED" = 0 ]
fi
