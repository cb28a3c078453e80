#!/usr/bin/env bash
# Compares slo-hub builds on this noisy machine the only way that holds up:
# alternated single runs (A B A B ...), then the median of each figure per
# build. Usage:
#   bash bench/ab.sh ROUNDS label=path/to/slo-hub label=path/to/slo-hub ...
# e.g. git stash; cargo build --profile benchmark; cp target/benchmark/slo-hub /tmp/hub-a
#      git stash pop; cargo build --profile benchmark; cp target/benchmark/slo-hub /tmp/hub-b
#      bash bench/ab.sh 5 a=/tmp/hub-a b=/tmp/hub-b
# Results: bench/results/ab-<date>/<label>/*.json and a summary on stdout.
# Single runs of one binary vary by ±30 % here; use 5 rounds or more, and
# prefer instruction counts (callgrind) or syscall counts (strace -c) when
# the change is small.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)"
rounds=$1
shift
out="bench/results/ab-$(date -u +%Y-%m-%dT%H-%M-%SZ)"
# SLO_BENCH: a load generator built elsewhere (e.g. with a shared target dir).
bench=${SLO_BENCH:-target/benchmark/slo-bench}
[ -n "${SLO_BENCH:-}" ] || cargo build --profile benchmark --bin slo-bench
for i in $(seq "$rounds"); do
  for pair in "$@"; do
    label=${pair%%=*}
    bin=${pair#*=}
    mkdir -p "$out/$label"
    echo "round $i: $label" >&2
    taskset -c 1 "$bench" --servers slo-hub --reps 1 \
      --hub-bin "$bin" --hub-label "$label" --out "$out/$label" >"$out/$label/log.$i" 2>&1
  done
done
python3 - "$out" "$@" <<'PY'
import glob, json, statistics, sys
out, pairs = sys.argv[1], sys.argv[2:]
keys = ["kib_per_socket", "lat_p50_us", "lat_p99_us", "sat_triggers_per_s",
        "sat_p99_ms", "sat_cpu_us_per_trigger", "bcast_cpu_us_per_delivery",
        "connects_per_s", "connect_cpu_us_per_socket", "hs256_triggers_per_s",
        "hs256_cpu_us_per_trigger", "rs256_triggers_per_s", "rs256_cpu_us_per_trigger",
        "missed"]
for label in (p.split("=", 1)[0] for p in pairs):
    reps = [json.load(open(f))["servers"][0]["median"]
            for f in sorted(glob.glob(f"{out}/{label}/*.json"))]
    print(f"{label} ({len(reps)} runs)")
    for k in keys:
        v = [r[k] for r in reps if r.get(k) is not None]
        if v:
            print(f"  {k:28} median {statistics.median(v):10.2f}   "
                  + " ".join(f"{x:.1f}" for x in v))
PY
