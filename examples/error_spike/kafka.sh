#!/usr/bin/env bash
# Produces the error-spike sample logs to the topic `app-logs` at $KAFKA_BROKERS (default
# 127.0.0.1:9092), with weir itself (produce.yaml: file lines → Kafka), then says how to
# run the Kafka variant of the job. The README of this folder says how to get a broker.
#   KAFKA_BROKERS=host:port examples/error_spike/kafka.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export KAFKA_BROKERS="${KAFKA_BROKERS:-127.0.0.1:9092}"
source scripts/setup.sh
cargo build --locked --bin weir
weir="$CARGO_TARGET_DIR/debug/weir"
"$weir" run examples/error_spike/produce.yaml --fresh
echo "sample logs are on app-logs at $KAFKA_BROKERS; now run:"
echo "  KAFKA_BROKERS=$KAFKA_BROKERS $weir run examples/error_spike/kafka.yaml"
echo "and read the alerts (read_committed), e.g.:"
echo "  kcat -b $KAFKA_BROKERS -C -t alerts -X isolation.level=read_committed -e"
