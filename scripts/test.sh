#!/usr/bin/env bash
# Runs weir's whole test suite on a fresh machine: installs what the build needs, then
# checks formatting and lints, runs every unit, integration and golden test, and the
# doc tests. Services needed by later tests (broker, database, S3) are started here too.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Services for the tests (127.0.0.1 only), stopped on exit; see scripts/services.sh.
source scripts/services.sh
start_s3
start_kafka
start_tansu
start_postgres
# Headless Chromium for the dashboard test (tests/ops.rs), from Debian.
command -v chromium >/dev/null 2>&1 || service_apt_install chromium
# The services are up: a test that needs one fails rather than skips (CI semantics).
export CI="${CI:-true}"
# Each fuzz target (tests/fuzz.rs) runs this long after replaying its corpus.
export WEIR_FUZZ_SECS="${WEIR_FUZZ_SECS:-30}"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast --lib --bins --tests --examples
fi
cargo test --workspace --locked --doc
