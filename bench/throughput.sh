#!/usr/bin/env bash
# Throughput of baton's serving path vs plain hyper-util, same handler, same run.
# Usage: bash bench/throughput.sh [RESULTS_DIR]   (from the repository root, as root)
# Installs wrk with apt if missing, builds the release binaries, runs bench/throughput.py.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk
fi
cargo build --release -p baton-bench
exec python3 bench/throughput.py "${1:-bench/results/throughput-$(date +%Y%m%d-%H%M%S)}"
