#!/usr/bin/env python3
"""Apache Flink (PyFlink Table API / SQL) counterpart of weir's w1/w2/w3/w4 benchmarks.

Local MiniCluster, streaming mode, parallelism 1. Each workload reads from the
built-in `datagen` connector (bounded by `number-of-rows`) and writes to a
`blackhole` sink. Only the job execution (`execute_insert(...).wait()`) is timed;
JVM start-up and planning of the TableEnvironment are excluded. An optional
warm-up job (same TableEnvironment / JVM, smaller row count) runs first.

Usage:
    python flink_bench.py --workload w2 --rows 10000000
    python flink_bench.py --workload w1 --rows 5000000
    python flink_bench.py --workload w3 --rows 5000000
    python flink_bench.py --workload w4 --rows 2000000   # rows per side; events = 2 x rows
    W1_JSONL=target/weir-bench/w1-logs-*.jsonl python flink_bench.py --workload w1json --rows 0
Set-up (Java 17 on the machine): python3 -m venv venv && venv/bin/pip install apache-flink
Options:
    --state rocksdb   RocksDB state backend with incremental checkpoints (default: heap)
    --checkpoint-interval 10s   checkpoints to /tmp/flink-bench-checkpoints
    --warmup-rows N   rows for the untimed warm-up job (default 500000, 0 = none)
    --check           instead of the blackhole, collect the result in Python and print
                      row counts (for small smoke tests only)
    --explain         print the optimized plan to stderr

Prints one line to stdout:
    workload=w2 rows=10000000 seconds=12.345 rows_per_s=810000 job_net_seconds=10.9 job_net_rows_per_s=917000
(seconds = wall clock of execute_insert().wait(), incl. per-job MiniCluster start-up
and teardown; job_net_* = JobExecutionResult.getNetRuntime() reported by Flink)
"""
import argparse
import sys
import os
import time

from pyflink.table import EnvironmentSettings, TableEnvironment

# datagen's default `rows-per-second` is 10000 (a throttle); lift it.
UNTHROTTLED = "'rows-per-second' = '9223372036854775807'"

# --- source DDL per workload (table name: src) ---------------------------------

# W2: 10 s tumbling count(*) per key, 10k keys, one event per 10 us of event time
# (100 rows per millisecond), watermark 1 s out-of-orderness.
W2_SRC = """
CREATE TEMPORARY TABLE src (
    id BIGINT,
    key INT,
    v INT,
    ts AS TO_TIMESTAMP_LTZ(id / 100, 3),
    WATERMARK FOR ts AS ts - INTERVAL '1' SECOND
) WITH (
    'connector' = 'datagen',
    'number-of-rows' = '{rows}',
    {unthrottled},
    'fields.id.kind' = 'sequence',
    'fields.id.start' = '1',
    'fields.id.end' = '{rows}',
    'fields.key.kind' = 'random',
    'fields.key.min' = '0',
    'fields.key.max' = '9999',
    'fields.v.kind' = 'random',
    'fields.v.min' = '0',
    'fields.v.max' = '1000'
)"""
W2_SINK = """
CREATE TEMPORARY TABLE snk (
    key INT, window_start TIMESTAMP(3), window_end TIMESTAMP(3), n BIGINT
) WITH ('connector' = 'blackhole')"""
W2_QUERY = """
SELECT key, window_start, window_end, COUNT(*) AS n
FROM TABLE(TUMBLE(TABLE src, DESCRIPTOR(ts), INTERVAL '10' SECOND))
GROUP BY key, window_start, window_end"""

# W1: filter `level = 'ERROR' AND latency_ms > 100` over generated log rows
# (no JSON parsing). datagen's random STRING is hex, so a random length-5 string
# never equals 'ERROR'; to match weir's w1 selectivity (5 % ERROR, 15 % WARN,
# 80 % INFO; latency in [1, 900]) `level` is a computed column from a random int.
# `message` (random, length 40) mirrors weir's w1 row width.
W1_SRC = """
CREATE TEMPORARY TABLE src (
    lvl INT,
    latency_ms INT,
    message STRING,
    level AS CASE WHEN lvl = 19 THEN 'ERROR' WHEN lvl >= 16 THEN 'WARN' ELSE 'INFO' END
) WITH (
    'connector' = 'datagen',
    'number-of-rows' = '{rows}',
    {unthrottled},
    'fields.lvl.kind' = 'random',
    'fields.lvl.min' = '0',
    'fields.lvl.max' = '19',
    'fields.latency_ms.kind' = 'random',
    'fields.latency_ms.min' = '1',
    'fields.latency_ms.max' = '900',
    'fields.message.kind' = 'random',
    'fields.message.length' = '40'
)"""
W1_SINK = """
CREATE TEMPORARY TABLE snk (
    level STRING, latency_ms INT, message STRING
) WITH ('connector' = 'blackhole')"""
W1_QUERY = """
SELECT level, latency_ms, message FROM src
WHERE level = 'ERROR' AND latency_ms > 100"""

# W1 literal variant as first specified: level = random STRING of length 5.
# Selectivity is 0 (random hex strings never equal 'ERROR').
W1RAW_SRC = """
CREATE TEMPORARY TABLE src (
    level STRING,
    latency_ms INT
) WITH (
    'connector' = 'datagen',
    'number-of-rows' = '{rows}',
    {unthrottled},
    'fields.level.kind' = 'random',
    'fields.level.length' = '5',
    'fields.latency_ms.kind' = 'random',
    'fields.latency_ms.min' = '0',
    'fields.latency_ms.max' = '1000'
)"""
W1RAW_SINK = """
CREATE TEMPORARY TABLE snk (level STRING, latency_ms INT) WITH ('connector' = 'blackhole')"""
W1RAW_QUERY = """
SELECT level, latency_ms FROM src WHERE level = 'ERROR' AND latency_ms > 100"""

# W3: 30-minute session windows per key, 100k keys, count + sum(v);
# one event per 10 ms of event time (as weir's w3.yaml: ts step 10ms).
# Same columns as W2's source; only the event-time step and the key range differ.
W3_SRC = W2_SRC.replace("id / 100", "id * 10").replace("'9999'", "'99999'")
W3_SINK = """
CREATE TEMPORARY TABLE snk (
    key INT, window_start TIMESTAMP(3), window_end TIMESTAMP(3), n BIGINT, total BIGINT
) WITH ('connector' = 'blackhole')"""
W3_QUERY = """
SELECT key, window_start, window_end, COUNT(*) AS n, CAST(SUM(v) AS BIGINT) AS total
FROM TABLE(SESSION(TABLE src PARTITION BY key, DESCRIPTOR(ts), INTERVAL '30' MINUTE))
GROUP BY key, window_start, window_end"""
# Fallback for Flink versions without the session window TVF.
W3_QUERY_LEGACY = """
SELECT key, SESSION_START(ts, INTERVAL '30' MINUTE), SESSION_END(ts, INTERVAL '30' MINUTE),
       COUNT(*) AS n, CAST(SUM(v) AS BIGINT) AS total
FROM src
GROUP BY SESSION(ts, INTERVAL '30' MINUTE), key"""


# W1 from JSON lines: the very file `weir bench` reads for w1 in `jsonl` mode (env
# W1_JSONL), decoded by Flink's `json` format, then the same filter. `--rows` is ignored.
W1JSON_SRC = """
CREATE TEMPORARY TABLE src (
    ts STRING, service STRING, level STRING, message STRING, latency_ms INT
) WITH (
    'connector' = 'filesystem',
    'path' = '{path}',
    'format' = 'json'
)"""

# W4: ±5 s interval join on key, as weir's w4.yaml: two sources of `rows` events each, one
# event per millisecond of event time per side, 10k keys, watermarks 1 s behind.
W4_LEFT = W2_SRC.replace("id / 100", "id")
W4_RIGHT = (W4_LEFT.replace("TABLE src (", "TABLE src2 (")
            .replace("    v INT,", "    w INT,").replace("'fields.v.", "'fields.w."))
W4_SRC = (W4_LEFT, W4_RIGHT)
W4_SINK = """
CREATE TEMPORARY TABLE snk (
    key INT, lts TIMESTAMP_LTZ(3), v INT, rts TIMESTAMP_LTZ(3), w INT
) WITH ('connector' = 'blackhole')"""
W4_QUERY = """
SELECT l.key, l.ts, l.v, CAST(r.ts AS TIMESTAMP_LTZ(3)), r.w FROM src AS l, src2 AS r
WHERE l.key = r.key
  AND r.ts BETWEEN l.ts - INTERVAL '5' SECOND AND l.ts + INTERVAL '5' SECOND"""

# W2-1m: W2 over 1M keys (as weir's w2-1m).
W2_1M_SRC = W2_SRC.replace("'9999'", "'999999'")
# Events per `--rows`: W4 reads `rows` from each of its two sources.
EVENTS_PER_ROW = {"w4": 2}

WORKLOADS = {
    "w1json": (W1JSON_SRC, W1_SINK, W1_QUERY),
    "w1": (W1_SRC, W1_SINK, W1_QUERY),
    "w1raw": (W1RAW_SRC, W1RAW_SINK, W1RAW_QUERY),
    "w2": (W2_SRC, W2_SINK, W2_QUERY),
    "w2-1m": (W2_1M_SRC, W2_SINK, W2_QUERY),
    "w3": (W3_SRC, W3_SINK, W3_QUERY),
    "w3legacy": (W3_SRC, W3_SINK, W3_QUERY_LEGACY),
    "w4": (W4_SRC, W4_SINK, W4_QUERY),
}


def make_env(state="heap", checkpoint_interval=None, checkpoint_dir="/tmp/flink-bench-checkpoints"):
    settings = EnvironmentSettings.in_streaming_mode()
    t_env = TableEnvironment.create(settings)
    conf = t_env.get_config()
    if state == "rocksdb":
        conf.set("state.backend.type", "rocksdb")
        conf.set("execution.checkpointing.incremental", "true")
    if checkpoint_interval:
        conf.set("execution.checkpointing.interval", checkpoint_interval)
        conf.set("execution.checkpointing.dir", "file://" + checkpoint_dir)
        conf.set("execution.checkpointing.mode", "EXACTLY_ONCE")
    conf.set("parallelism.default", "1")
    conf.set("table.exec.resource.default-parallelism", "1")
    conf.set("table.local-time-zone", "UTC")
    conf.set("pipeline.name", "flink-bench")
    return t_env


def define(t_env, workload, rows):
    src, snk, query = WORKLOADS[workload]
    for table in ("src", "src2", "snk"):
        t_env.execute_sql(f"DROP TEMPORARY TABLE IF EXISTS {table}")
    for ddl in src if isinstance(src, tuple) else (src,):
        t_env.execute_sql(ddl.format(rows=rows, unthrottled=UNTHROTTLED,
                                     path=os.environ.get('W1_JSONL', '')))
    t_env.execute_sql(snk)
    return query


def run_blackhole(t_env, workload, rows):
    query = define(t_env, workload, rows)
    table = t_env.sql_query(query)
    t0 = time.perf_counter()
    result = table.execute_insert("snk")
    result.wait()
    wall = time.perf_counter() - t0
    net = None
    try:  # the job's own runtime as reported by the JobMaster (no MiniCluster start-up)
        client = result.get_job_client()
        if client is not None:
            net = client.get_job_execution_result().result().get_net_runtime() / 1000.0
    except Exception as e:  # noqa: BLE001
        print(f"(net runtime unavailable: {e})", file=sys.stderr)
    return wall, net


def run_check(t_env, workload, rows):
    query = define(t_env, workload, rows)
    n_out = 0
    sum_n = 0
    with t_env.execute_sql(query).collect() as results:
        for r in results:
            n_out += 1
            if workload in ("w2", "w3", "w3legacy"):
                sum_n += r[3]
    print(f"check workload={workload} rows={rows} output_rows={n_out}"
          + (f" sum_count={sum_n}" if sum_n else ""), file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", required=True, choices=sorted(WORKLOADS))
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--warmup-rows", type=int, default=500_000)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--explain", action="store_true")
    ap.add_argument("--state", choices=["heap", "rocksdb"], default="heap",
                    help="state backend (rocksdb: incremental checkpoints)")
    ap.add_argument("--checkpoint-interval", default=None,
                    help="e.g. 10s: aligned checkpoints to a local folder")
    args = ap.parse_args()

    t_env = make_env(args.state, args.checkpoint_interval)
    if args.explain:
        query = define(t_env, args.workload, args.rows)
        print(t_env.sql_query(query).explain(), file=sys.stderr)
    if args.check:
        run_check(t_env, args.workload, args.rows)
        return
    if args.warmup_rows > 0:
        w, _ = run_blackhole(t_env, args.workload, args.warmup_rows)
        print(f"warmup workload={args.workload} rows={args.warmup_rows} seconds={w:.3f}",
              file=sys.stderr)
    secs, net = run_blackhole(t_env, args.workload, args.rows)
    events = args.rows * EVENTS_PER_ROW.get(args.workload, 1)
    if args.workload == "w1json":  # the file's lines
        with open(os.environ["W1_JSONL"], "rb") as f:
            events = sum(1 for _ in f)
    extra = ""
    if net:
        extra = f" job_net_seconds={net:.3f} job_net_rows_per_s={events / net:.0f}"
    print(f"workload={args.workload} rows={args.rows} events={events} seconds={secs:.3f} "
          f"rows_per_s={events / secs:.0f}{extra}", flush=True)


if __name__ == "__main__":
    main()
