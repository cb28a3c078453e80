#!/usr/bin/env bash
# Samples slo-hub's CPU (perf, software cpu-clock event: no hardware counters
# on these VMs) during one phase of slo-bench:
#   saturated — 64 triggers in flight, 3 tabs each, one round (so no
#               re-login in the profile); perf attaches when the latency
#               phase starts (100 triggers, ~20 ms) and stops before the
#               load generator tears its 15,000 sockets down;
#   broadcast — one logout to 15,000 sockets of one user; perf attaches once
#               they are connected (the trigger follows 500 ms later) and
#               stops when the server is idle again.
# Needs a release build (cargo build --profile benchmark) and perf. Report:
#   perf report -i /tmp/slo-hub-<phase>.data --no-children --sort dso
set -euo pipefail
cd "$(dirname "$0")/.."
phase=${1:?usage: bench/profile.sh saturated|broadcast}
case "$phase" in
  saturated) start="   latency" stop="saturated: done" ;;
  broadcast) start="broadcast: connected" stop="broadcast: settled" ;;
  *) echo "unknown phase: $phase (saturated or broadcast)" >&2; exit 2 ;;
esac
ulimit -n "$(ulimit -Hn)"
log=$(mktemp)
data=/tmp/slo-hub-$phase.data
taskset -c 1 target/benchmark/slo-bench --servers slo-hub --reps 1 \
  --latency-triggers 100 --rounds 1 --out "$(mktemp -d)" >"$log" 2>&1 &
bench=$!
until grep -q "$start" "$log"; do
  kill -0 "$bench" 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.002
done
hub=$(pgrep -x slo-hub | head -1)
perf record -F 20000 -e cpu-clock -g -p "$hub" -o "$data" 2>/dev/null &
perf_pid=$!
until grep -q "$stop" "$log"; do sleep 0.002; done
kill -INT "$perf_pid"
wait "$perf_pid" || true
wait "$bench"
perf report -i "$data" --no-children --sort dso --stdio -g none 2>/dev/null | grep '%' | head -5
