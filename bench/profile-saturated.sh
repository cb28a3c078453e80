#!/usr/bin/env bash
# Samples slo-hub's CPU (perf, software cpu-clock event: no hardware counters
# on these VMs) during slo-bench's saturated phase only: perf attaches when
# the latency phase starts (100 triggers, ~20 ms) and stops when slo-bench
# says the saturated phase is done, before the load generator tears its
# 15,000 sockets down (which would dominate the profile otherwise).
# Needs a release build (cargo build --release) and perf. Report:
#   perf report -i /tmp/slo-hub-saturated.data --no-children --sort dso
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)"
log=$(mktemp)
taskset -c 1 target/release/slo-bench --servers slo-hub --reps 1 \
  --latency-triggers 100 --out "$(mktemp -d)" >"$log" 2>&1 &
bench=$!
until grep -q "   latency" "$log"; do
  kill -0 "$bench" 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.005
done
hub=$(pgrep -f "slo-hub serve --config" | head -1)
perf record -F 20000 -e cpu-clock -g -p "$hub" -o /tmp/slo-hub-saturated.data 2>/dev/null &
perf_pid=$!
until grep -q "saturated: done" "$log"; do sleep 0.002; done
kill -INT "$perf_pid"
wait "$perf_pid" || true
wait "$bench"
perf report -i /tmp/slo-hub-saturated.data --no-children --sort dso --stdio -g none 2>/dev/null | grep '%' | head -5
