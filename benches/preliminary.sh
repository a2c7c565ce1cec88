#!/usr/bin/env bash
# Preliminary whole-job throughput, before the benchmark suite (`weir bench`) exists:
# runs W0 (datagen only), W1 (JSON parse + filter, 1M lines), W2 (10 s tumbling count,
# 10k keys, 5M rows), W3 (30 min sessions, 100k keys, 5M rows) and W4 (±5 s interval
# join, 2 × 2M rows, 10k keys) at parallelism 1 with a release build, and prints each
# job's rate and peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --locked --bin weir
[ -f benches/data/logs.jsonl ] || python3 benches/generate_logs.py
W="$CARGO_TARGET_DIR/release/weir"
for job in w0 w1 w2 w3 w4; do
  rm -rf benches/jobs/out
  /usr/bin/time -f "  peak RSS %M KB, wall %e s" "$W" run --no-progress "benches/jobs/$job.yaml" 2>&1 |
    grep -E "finished|peak RSS"
done
rm -rf benches/jobs/out
