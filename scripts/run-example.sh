#!/usr/bin/env bash
# Runs the error-spike example job on the embedded defaults (local files, no servers)
# and shows what it wrote: alerts for services with 50+ errors in a minute, and the
# malformed lines it sent to the dead-letter file.
#
# It builds weir without its default features (RocksDB state, S3 checkpoints): the
# example needs neither, and RocksDB's C++ build would triple the wait for a first
# result. `cargo install --path .` and scripts/test.sh build everything.
set -euo pipefail
cd "$(dirname "$0")/.."
export WEIR_SETUP_MINIMAL=1
source scripts/setup.sh
cargo build --locked --bin weir --no-default-features
ex=examples/error_spike
rm -rf "$ex/out" "$ex/.weir"
"$CARGO_TARGET_DIR/debug/weir" run "$ex/job.yaml"
echo "--- $ex/out/alerts.jsonl"
cat "$ex/out/alerts.jsonl"
echo "--- $ex/out/dead_letter.jsonl"
cut -c1-160 "$ex/out/dead_letter.jsonl"
