#!/usr/bin/env bash
# Checkpoint figures for a job holding ~1 GB of keyed state in RocksDB:
# duration and uploaded bytes of the first full checkpoint and of an incremental one,
# and the time to restore the state. Usage:
#   benches/checkpoint_state.sh [ROWS] [WEIR_BINARY]
# ROWS (default 2500000) rows of 400 random bytes are deduplicated by (id, pad), so the
# dedup state holds one ~410-byte key per row. A second, slow source keeps adding a few
# keys per second after the fill, so later checkpoints are incremental.
set -euo pipefail
ROWS=${1:-2500000}
BIN=${2:-${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}/debug/weir}
INTERVAL=${INTERVAL:-240s}
DIR=$(mktemp -d /tmp/weir-ckpt-bench.XXXXXX)
trap 'rm -rf "$DIR"' EXIT
cat > "$DIR/job.yaml" <<YAML
name: big-state
parallelism: 1
checkpoint: { interval: $INTERVAL, storage: ckpt, retain: 2, timeout: 30m }
state: { backend: rocksdb, dir: state, memory_budget: 64MB }
sources:
  fill:
    type: datagen
    rows: $ROWS
    seed: 1
    schema: { id: int, pad: string }
    fields: { id: { sequence: { start: 0 } }, pad: { length: 400 } }
  trickle:
    type: datagen
    rate: 50
    seed: 2
    schema: { id: int, pad: string }
    fields: { id: { sequence: { start: 1000000000 } }, pad: { length: 400 } }
steps:
  both: { from: [fill, trickle], union: {} }
  unique: { from: both, dedup: { key: [id, pad] } }
  none: { from: unique, filter: "id < 0" }
sinks:
  out: { from: none, type: file, path: out/none.jsonl }
YAML
cd "$DIR"
echo "binary: $BIN; rows: $ROWS; interval: $INTERVAL; dir: $DIR" >&2
RUST_LOG=weir_engine::checkpoint=info,weir_engine::runtime=info "$BIN" run job.yaml --no-progress > run1.log 2>&1 &
PID=$!
# Wait for two completed checkpoints after the fill source ended.
while kill -0 $PID 2>/dev/null; do
  n=$(grep -c "checkpoint complete" run1.log || true)
  [ "$n" -ge 2 ] && break
  sleep 5
done
kill -0 $PID 2>/dev/null || { echo "the job ended early:" >&2; tail -20 run1.log >&2; exit 1; }
kill -INT $PID; wait $PID || true
echo "== checkpoints (run 1)"
grep "checkpoint complete" run1.log | sed 's/\x1b\[[0-9;]*m//g' | sed -E 's/.*epoch=([0-9]+).*duration_ms=([0-9]+).*uploaded_bytes=([0-9]+).*state_bytes=([0-9]+).*/epoch \1: \2 ms, uploaded \3 bytes of \4/'
du -sh ckpt | sed 's/^/checkpoint storage on disk: /'
start=$(date +%s%N)
RUST_LOG=weir_engine::checkpoint=info,weir_engine::runtime=info "$BIN" run job.yaml --no-progress > run2.log 2>&1 &
PID=$!
until grep -q "state restored" run2.log; do
  kill -0 $PID 2>/dev/null || break
  sleep 0.2
done
end=$(date +%s%N)
kill -INT $PID; wait $PID || true
echo "== restore (run 2)"
grep "state restored" run2.log | sed 's/\x1b\[[0-9;]*m//g' | sed -E 's/.*bytes=([0-9]+) elapsed_ms=([0-9]+).*/restored \1 bytes in \2 ms (download + open)/'
echo "process start to state restored: $(( (end - start) / 1000000 )) ms"
