#!/usr/bin/env bash
# Samples slo-hub's CPU (perf, software cpu-clock event) during slo-bench's
# broadcast phase only: one logout to 15,000 sockets of one user. perf
# attaches when slo-bench says the broadcast's sockets are connected (the
# trigger follows 500 ms later) and stops once the server is idle again.
# Needs a release build and perf. Report:
#   perf report -i /tmp/slo-hub-broadcast.data --no-children --sort dso
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)"
log=$(mktemp)
taskset -c 1 target/release/slo-bench --servers slo-hub --reps 1 \
  --latency-triggers 100 --out "$(mktemp -d)" >"$log" 2>&1 &
bench=$!
until grep -q "broadcast: connected" "$log"; do
  kill -0 "$bench" 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.002
done
hub=$(pgrep -x slo-hub | head -1)
perf record -F 20000 -e cpu-clock -g -p "$hub" -o /tmp/slo-hub-broadcast.data 2>/dev/null &
perf_pid=$!
until grep -q "broadcast: settled" "$log"; do sleep 0.002; done
kill -INT "$perf_pid"
wait "$perf_pid" || true
wait "$bench"
grep -o "bcast_cpu_us_per_delivery: [0-9.]*" "$log"
perf report -i /tmp/slo-hub-broadcast.data --no-children --sort dso --stdio -g none 2>/dev/null | grep '%' | head -5
