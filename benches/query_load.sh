#!/usr/bin/env bash
# Queryable state under load: a job updates 50,000 keys of a `table` step while 100
# clients read random keys over HTTP (127.0.0.1, keep-alive, closed loop). Prints the
# job's throughput without and with the query load, and lookups/s with p50/p99 latency.
#   benches/query_load.sh [WEIR_BINARY] [RATE|none] [SECONDS]
# e.g. benches/query_load.sh target/release/weir 150000 10
set -euo pipefail
cd "$(dirname "$0")/.."
weir="${1:-target/release/weir}"
rate="${2:-150000}"
secs="${3:-10}"
port="${QUERY_LOAD_PORT:-18090}"
work="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
if [ "$rate" = none ]; then
  sed '/^    rate: RATE$/d' benches/query_load.yaml > "$work/job.yaml"
else
  sed "s/RATE/$rate/" benches/query_load.yaml > "$work/job.yaml"
fi
"$weir" run "$work/job.yaml" --no-progress --http "127.0.0.1:$port" 2>"$work/run.log" &
pid=$!
records() {
  curl -sS "http://127.0.0.1:$port/api/jobs/query-load" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print([n["records_in"] for n in d["nodes"] if n["name"]=="latest"][0])'
}
sleep 6 # start-up and warm-up: every key written at least once
a=$(records); sleep "$secs"; b=$(records)
quiet=$(( (b - a) / secs ))
a=$(records)
"$weir" query-load --addr "127.0.0.1:$port" --job query-load --step latest \
  --keys 50000 --clients "${QUERY_LOAD_CLIENTS:-100}" --duration "${secs}s" > "$work/load.txt"
b=$(records)
loaded=$(( (b - a) / secs ))
echo "job rate setting: $rate updates/s, 50000 keys, parallelism 2, $secs s per phase"
echo "job throughput without queries: $quiet updates/s"
echo "job throughput with queries:    $loaded updates/s ($(python3 -c "print(f'{100*($quiet-$loaded)/max($quiet,1):.1f}')") % less)"
echo "queries (${QUERY_LOAD_CLIENTS:-100} clients): $(cat "$work/load.txt")"
