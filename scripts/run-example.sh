#!/usr/bin/env bash
# Runs the log-filter example job on the embedded defaults (local files, no servers)
# and shows what it wrote.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --locked --bin weir
"$CARGO_TARGET_DIR/debug/weir" run examples/log_filter/job.yaml
echo "--- examples/log_filter/out/problems.jsonl (first 5 of $(wc -l < examples/log_filter/out/problems.jsonl))"
head -5 examples/log_filter/out/problems.jsonl
echo "--- examples/log_filter/out/dead_letter.jsonl"
cat examples/log_filter/out/dead_letter.jsonl
