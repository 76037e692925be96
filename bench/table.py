#!/usr/bin/env python3
"""Markdown table of baton-bench JSON reports (see bench/CLI.md), one row per file.

    python3 bench/table.py RESULT.json...

Rows keep the order of the command line. A missing or null value prints as "–"; a
file that cannot be read becomes a row that says why, and the others still print.
"""

import json
import sys

DASH = "–"
FAILURE_CLASSES = ("status", "refused", "reset", "eof", "timeout", "other")
COLUMNS = (
    "mechanism",
    "client mode",
    "reloads",
    "requests",
    "failed",
    "failed per reload",
    "failure classes",
    "p99 steady (ms)",
    "p99 in reload windows (ms)",
    "req/s",
)


def get(obj, *keys):
    """obj[k1][k2]... or None when any level is missing, null or not a dict."""
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def num(value, digits=0):
    if value is None or isinstance(value, bool):
        return DASH
    if not isinstance(value, (int, float)):
        return str(value)
    if digits == 0:
        return str(round(value))
    return f"{value:.{digits}f}"


def classes(failures):
    if not isinstance(failures, dict):
        return DASH
    names = list(FAILURE_CLASSES) + sorted(k for k in failures if k not in FAILURE_CLASSES)
    parts = [f"{k} {failures[k]}" for k in names if isinstance(failures.get(k), (int, float)) and failures[k]]
    return ", ".join(parts) if parts else "none"


def cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def row(path):
    try:
        with open(path, encoding="utf-8") as f:
            r = json.load(f)
        if not isinstance(r, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        return [f"{path}: {e}"] + [DASH] * (len(COLUMNS) - 1)
    reloads = get(r, "reloads", "count")
    return [
        r.get("label") or path,
        get(r, "client", "mode") or DASH,
        num(reloads),
        num(r.get("requests")),
        num(r.get("failed")),
        # With no reloads there is no "per reload".
        num(get(r, "reloads", "failed_per_reload"), 2) if reloads else DASH,
        classes(r.get("failures")),
        num(get(r, "latency_ms", "steady", "p99"), 2),
        num(get(r, "latency_ms", "reload_windows", "p99"), 2) if reloads else DASH,
        num(r.get("rps")),
    ]


def main(paths):
    if not paths:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "|".join("---" for _ in COLUMNS) + "|")
    for path in paths:
        print("| " + " | ".join(cell(c) for c in row(path)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
