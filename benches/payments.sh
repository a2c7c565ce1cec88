#!/usr/bin/env bash
# The payments example job into PostgreSQL, exactly once (docs/BENCHMARKS.md, "Payments
# into PostgreSQL"):
#   1. throughput: payments/s at parallelism 1 and 2, checkpoints every 1 s and 10 s;
#   2. latency from ingestion to commit, at p=1 and 2: the job paced at RATE lines/s (half
#      the p=1 throughput; the file is one split, so the pace is the job's), each row's commit time (a `committed_at` column defaulting to
#      clock_timestamp(), set when the sink's COPY writes it) minus its ingestion time
#      (process start + line index / RATE, so start-up counts against the latency);
#   3. the limit: PostgreSQL's own COPY of the same rows (psql \copy from a CSV file).
#
# Usage: benches/payments.sh WEIR_BINARY "PG_CONNECTION" [COUNT] [RATE]
#   e.g. benches/payments.sh target/release/weir \
#          "host=127.0.0.1 port=15432 user=weir password=weir dbname=weir_test" 1000000
set -euo pipefail
cd "$(dirname "$0")/.."
weir=$(realpath "$1")
pg="$2"
count="${3:-1000000}"
rate="${4:-}"
work=$(mktemp -d "${TMPDIR:-/tmp}/weir-payments-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
python3 examples/payments/generate_data.py --count "$count" --out "$work" >"$work/expected.txt"
echo "# $(head -1 "$work/expected.txt"), $count input lines; $(nproc) cores; $("$weir" --version)"

psql_() { psql "$pg" -v ON_ERROR_STOP=1 -qtA "$@"; }

# job NAME P INTERVAL [RATE]: writes $work/NAME/job.yaml and pre-creates its table.
job() {
  local name="$1" p="$2" interval="$3" r="${4:-}"
  local dir="$work/$name"
  mkdir -p "$dir"
  ln -sfn "$work/data" "$dir/data"
  sed -e "s/^name: payments-postgres/name: bench-$name/" \
    -e "s/^parallelism: 2/parallelism: $p/" \
    -e "s/interval: 1s/interval: $interval/" \
    -e "s/table: payments_dead_letters/table: dlq_$name/" \
    -e "s/table: payments\$/table: pay_$name/" \
    examples/payments/postgres.yaml >"$dir/job.yaml"
  if [ -n "$r" ]; then
    sed -i "s|^    path: data/payments.jsonl|    path: data/payments.jsonl\n    rate: $r|" "$dir/job.yaml"
  fi
  psql_ -c "DROP TABLE IF EXISTS pay_$name, dlq_$name" -c "CREATE TABLE pay_$name (
      payment_id text PRIMARY KEY, ts timestamptz, merchant_id text, merchant_name text,
      merchant_country text, mcc text, card_country text, amount double precision,
      currency text, amount_eur double precision,
      committed_at timestamptz NOT NULL DEFAULT clock_timestamp())"
}

# run NAME: runs the job; prints seconds and rows.
run() {
  local name="$1" dir="$work/$1"
  local start end
  start=$(date +%s.%N)
  (cd "$dir" && PAYMENTS_DB="$pg" "$weir" run job.yaml --no-progress 2>"$dir/log") || {
    cat "$dir/log" >&2
    return 1
  }
  end=$(date +%s.%N)
  echo "$start $end $(psql_ -c "SELECT count(*) FROM pay_$name")"
}

echo "| run | p | checkpoints | rows | seconds | payments/s (input lines/s) |"
echo "|---|---|---|---|---|---|"
best=0
for p in 1 2; do
  for interval in 1s 10s; do
    name="t_p${p}_${interval}"
    job "$name" "$p" "$interval"
    read -r s e rows < <(run "$name")
    secs=$(python3 -c "print(f'{$e - $s:.2f}')")
    lps=$(python3 -c "print(int($count / ($e - $s)))")
    echo "| throughput | $p | $interval | $rows | $secs | $lps |"
    if [ "$p" = 1 ] && [ "$lps" -gt "$best" ]; then best=$lps; fi
  done
done

rate="${rate:-$((best / 2))}"
echo
echo "| latency run (paced at $rate lines/s) | p | checkpoints | p50 ms | p99 ms | max ms |"
echo "|---|---|---|---|---|---|"
for lp in 1 2; do for interval in 1s 10s; do
  name="l_p${lp}_${interval}"
  job "$name" "$lp" "$interval" "$rate"
  read -r s _e _rows < <(run "$name")
  psql_ -F ' ' -c "WITH l AS (SELECT (extract(epoch FROM committed_at) - ($s +
      substring(payment_id FROM 5)::bigint / $rate.0)) * 1000 AS ms FROM pay_$name)
    SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric),
           round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric),
           round(max(ms)::numeric) FROM l" |
    while read -r p50 p99 mx; do echo "| latency | $lp | $interval | $p50 | $p99 | $mx |"; done
done; done

# The limit: PostgreSQL's own COPY of the rows the job wrote.
src="pay_t_p1_1s"
psql_ -c "\\copy (SELECT payment_id, ts, merchant_id, merchant_name, merchant_country, mcc, card_country, amount, currency, amount_eur FROM $src) TO '$work/rows.csv' CSV"
psql_ -c "DROP TABLE IF EXISTS copy_limit" -c "CREATE TABLE copy_limit (LIKE $src INCLUDING ALL)"
rows=$(wc -l <"$work/rows.csv")
s=$(date +%s.%N)
psql_ -c "BEGIN" -c "\\copy copy_limit (payment_id, ts, merchant_id, merchant_name, merchant_country, mcc, card_country, amount, currency, amount_eur) FROM '$work/rows.csv' CSV" -c "COMMIT"
e=$(date +%s.%N)
echo
echo "PostgreSQL's own COPY of the same $rows rows (psql \\copy, CSV, one transaction, primary key): $(python3 -c "print(f'{$e - $s:.2f} s, {int($rows / ($e - $s))} rows/s')")"
psql_ -c "DROP TABLE IF EXISTS copy_limit"
for t in t_p1_1s t_p1_10s t_p2_1s t_p2_10s l_p1_1s l_p1_10s l_p2_1s l_p2_10s; do
  psql_ -c "DROP TABLE IF EXISTS pay_$t, dlq_$t"
done
