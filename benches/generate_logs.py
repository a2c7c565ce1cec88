#!/usr/bin/env python3
"""Writes benches/data/logs.jsonl: 1,000,000 JSON log lines (seed 1, ~119 MB) for W1."""
import json
import os
import random

random.seed(1)
here = os.path.dirname(os.path.abspath(__file__))
os.makedirs(os.path.join(here, "data"), exist_ok=True)
services = [f"svc-{i}" for i in range(50)]
levels = ["INFO"] * 80 + ["WARN"] * 15 + ["ERROR"] * 5
with open(os.path.join(here, "data", "logs.jsonl"), "w") as f:
    t = 1717232400000
    for _ in range(1_000_000):
        t += random.randint(0, 3)
        f.write(json.dumps({"ts": t, "service": random.choice(services),
                            "level": random.choice(levels),
                            "message": "request handled in %d ms" % random.randint(1, 900),
                            "latency_ms": random.randint(1, 900)}) + "\n")
