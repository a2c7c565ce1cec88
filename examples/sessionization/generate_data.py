#!/usr/bin/env python3
"""Generates data/clicks.jsonl for the sessionization example (deterministic: seed 7)
and prints the sessions a 30-minute inactivity gap must find (expected/ holds them).

25 users over about six hours; each user has 1-4 visits separated by 45-150 minutes of
inactivity; clicks within a visit are 5 s to 25 minutes apart. Events arrive up to 10 s
out of order.
"""
import datetime
import json
import random

random.seed(7)
base = datetime.datetime(2024, 6, 1, 8, 0, 0, tzinfo=datetime.timezone.utc)
pages = ["/", "/search", "/product/1", "/product/2", "/product/3", "/cart", "/checkout", "/help"]
events, sessions = [], []
for u in range(25):
    user = f"user-{u:02d}"
    t = random.randint(0, 60) * 60_000
    for _visit in range(random.randint(1, 4)):
        clicks = []
        for _ in range(random.randint(1, 12)):
            clicks.append((t, random.choice(pages)))
            t += random.randint(5_000, 25 * 60_000)
        last = clicks[-1][0]
        sessions.append((user, clicks[0][0], last, len(clicks), len({p for _, p in clicks})))
        events += [(ms, user, p) for ms, p in clicks]
        t = last + random.randint(45, 150) * 60_000
lines = []
for ms, user, page in sorted(events):
    ts = base + datetime.timedelta(milliseconds=ms)
    rec = {"ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"), "user_id": user, "page": page}
    lines.append((ms + random.randint(0, 10_000), json.dumps(rec)))
lines.sort()
with open("data/clicks.jsonl", "w") as f:
    f.write("\n".join(l for _, l in lines) + "\n")
print(f"{len(events)} clicks, {len(sessions)} sessions")
for user, start, end, views, distinct in sorted(sessions):
    print(user, start, end, (end - start) // 1000, views, distinct)
