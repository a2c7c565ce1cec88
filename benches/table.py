#!/usr/bin/env python3
"""Prints `weir bench --json` results as the Markdown table of docs/BENCHMARKS.md.
Usage: python3 benches/table.py results.json [workload ...]"""
import json
import sys

rows = json.load(open(sys.argv[1]))
only = set(sys.argv[2:])
print("| workload | input | p | events | M ev/s | M ev/s per core | latency p50 / p99 ms | peak RSS MB "
      "| with checkpoints (1 s): M ev/s | cost | ckpt mean / max ms | uploaded MB |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    if only and r["workload"] not in only:
        continue
    lat = "-" if r["latency_p50_ms"] is None else f'{r["latency_p50_ms"]:.1f} / {r["latency_p99_ms"]:.1f}'
    w = r.get("with_checkpoints") or {}
    c = w.get("checkpoints") or {}
    cost = r.get("checkpoint_cost")
    print(f'| {r["workload"]} | {r["input"]} | {r["parallelism"]} | {r["events"]:,} '
          f'| {r["events_per_s"]/1e6:.2f} | {r["events_per_core_s"]/1e6:.2f} | {lat} '
          f'| {r["peak_rss_bytes"]/1048576:.0f} '
          f'| {w.get("events_per_s", 0)/1e6:.2f} | {"-" if cost is None else f"{cost*100:.0f} %"} '
          f'| {c.get("mean_duration_ms", 0):.0f} / {c.get("max_duration_ms", 0)} '
          f'| {c.get("uploaded_bytes", 0)/1e6:.1f} |')
