#!/usr/bin/env bash
# Instructions per user-token logout, counted by callgrind (repeatable on a
# noisy machine where timings are not): run twice with different N and take
# the difference, e.g. (Ir(1200) - Ir(200)) / 1000.
#   bash bench/callgrind/run.sh LABEL path/to/slo-hub N
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=${TMPDIR:-/tmp}/slo-hub-callgrind
mkdir -p "$work"
label=$1; bin=$2; n=$3
rm -rf "$work/data-$label"; mkdir -p "$work/data-$label"
RUST_LOG=warn SLO_HUB_DATA_DIR="$work/data-$label" valgrind --tool=callgrind --callgrind-out-file="$work/cg-$label-$n.out" "$bin" serve --config "$here/hub.toml" > "$work/log-$label-$n" 2>&1 &
vg=$!
for i in $(seq 600); do (echo > /dev/tcp/127.0.0.1/18755) 2>/dev/null && break; sleep 0.1; done
ok=$(python3 "$here/drive.py" $n 18755)
kill -INT $vg; wait $vg || true
ir=$(grep -h "^summary:" "$work/cg-$label-$n.out" | awk "{print \$2}")
echo "$label n=$n ok=$ok Ir=$ir"
