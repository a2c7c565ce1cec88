#!/usr/bin/env python3
"""Generates data/app-logs.jsonl for the error-spike example (deterministic: seed 42).

Ten minutes of logs from four services. Background errors stay well under the alert
threshold (50 per service per minute); `payments` spikes in minute 3 and `checkout` in
minute 7. Events are up to 3 s out of order, and a few lines are malformed on purpose.
"""
import datetime
import json
import random

random.seed(42)
base = datetime.datetime(2024, 6, 1, 9, 0, 0, tzinfo=datetime.timezone.utc)
services = ["checkout", "payments", "search", "auth"]
events = []
for sec in range(600):
    for _ in range(3):  # ~3 background events per second
        svc = random.choice(services)
        level = random.choices(["INFO", "WARN", "ERROR"], [80, 15, 5])[0]
        events.append((sec * 1000 + random.randint(0, 999), svc, level, "request handled"))
spikes = {("payments", 3): 75, ("checkout", 7): 60}
for (svc, minute), n in spikes.items():
    for _ in range(n):
        ms = minute * 60_000 + random.randint(0, 59_999)
        events.append((ms, svc, "ERROR", "upstream timeout"))
events.sort()
lines = []
for ms, svc, level, msg in events:
    # Bounded disorder: shift each event's position, not its timestamp.
    ts = base + datetime.timedelta(milliseconds=ms)
    rec = {"ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
           "service": svc, "level": level, "message": msg}
    lines.append((ms + random.randint(0, 3000), json.dumps(rec)))
lines.sort()
out = [l for _, l in lines]
out.insert(100, '{"ts": "2024-06-01T09:00:40Z", "service": "auth", "level": "ERROR"')
out.insert(900, '{"ts": "not-a-time", "service": "auth", "level": "ERROR", "message": "x"}')
out.insert(1500, "<html>502 Bad Gateway</html>")
with open("data/app-logs.jsonl", "w") as f:
    f.write("\n".join(out) + "\n")
