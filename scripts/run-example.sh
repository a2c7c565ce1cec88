#!/usr/bin/env bash
# Runs the error-spike example job on the embedded defaults (local files, no servers)
# and shows what it wrote: alerts for services with 50+ errors in a minute, and the
# malformed lines it sent to the dead-letter file.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --locked --bin weir
ex=examples/error_spike
rm -rf "$ex/out"
"$CARGO_TARGET_DIR/debug/weir" run "$ex/job.yaml"
echo "--- $ex/out/alerts.jsonl"
cat "$ex/out/alerts.jsonl"
echo "--- $ex/out/dead_letter.jsonl"
cut -c1-160 "$ex/out/dead_letter.jsonl"
