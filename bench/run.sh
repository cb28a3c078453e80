#!/usr/bin/env bash
# Runs the whole benchmark: installs the peer servers (npm ci), builds slo-hub
# and the load generator in release mode, then runs every server pinned to
# CPU 0 with the load generator pinned to CPU 1. Results land in
# bench/results/<date>.{json,md,svg}. Arguments go to slo-bench
# (e.g. --servers slo-hub,uws --reps 1).
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)"
if [ ! -d bench/peers/node_modules ]; then
  # `npm ci` trips over the lock file's optional platform packages under
  # npm 11; `npm install` still installs the locked versions.
  (cd bench/peers && npm install --no-audit --no-fund)
fi
cargo build --profile benchmark --bin slo-hub --bin slo-bench
exec taskset -c 1 target/benchmark/slo-bench "$@"
