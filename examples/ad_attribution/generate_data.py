#!/usr/bin/env python3
"""Generates data/impressions.jsonl and data/clicks.jsonl for the ad-attribution example
(deterministic: seed 11) and writes the attribution a brute-force join must find to
expected/out/attribution.jsonl.

30 users see ads of 6 ads (3 campaigns) over about 40 minutes. About a third of the
impressions get a click 0.5-14 s later (clicks after 10 s are not attributed), a few
users click twice, and some clicks have no impression at all. Impressions arrive up to
2 s out of order and clicks up to 5 s (each source declares its own bound).
"""
import datetime
import json
import random

random.seed(11)
base = datetime.datetime(2024, 6, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
ads = {f"ad-{i}": f"campaign-{'abc'[i % 3]}" for i in range(6)}
WINDOW_MS = 10_000


def iso(ms):
    ts = base + datetime.timedelta(milliseconds=ms)
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


impressions, clicks = [], []
for n in range(400):
    t = random.randint(0, 40 * 60_000)
    user = f"user-{random.randint(0, 29):02d}"
    ad = random.choice(sorted(ads))
    imp = {"ts": t, "impression_id": f"imp-{n:04d}", "ad_id": ad, "user_id": user,
           "campaign": ads[ad]}
    impressions.append(imp)
    r = random.random()
    if r < 0.33:
        delays = [random.choice([500, 1_000, 2_500, 4_000, 7_000, 9_999, 10_000, 10_001, 14_000])]
        if random.random() < 0.1:
            delays.append(delays[0] + random.randint(100, 3_000))
        for d in delays:
            clicks.append({"ts": t + d, "click_id": f"clk-{len(clicks):04d}", "ad_id": ad,
                           "user_id": user})
for n in range(15):  # clicks with no impression
    clicks.append({"ts": random.randint(0, 40 * 60_000), "click_id": f"clk-{len(clicks):04d}",
                   "ad_id": random.choice(sorted(ads)),
                   "user_id": f"user-{random.randint(30, 39):02d}"})


def write(path, records, jitter):
    lines = []
    for rec in records:
        out = dict(rec)
        out["ts"] = iso(rec["ts"])
        lines.append((rec["ts"] + random.randint(0, jitter), json.dumps(out)))
    lines.sort()
    with open(path, "w") as f:
        f.write("\n".join(l for _, l in lines) + "\n")


write("data/impressions.jsonl", impressions, 2_000)
write("data/clicks.jsonl", clicks, 5_000)

# Brute force: impression.ts BETWEEN click.ts - 10s AND click.ts, same ad and user;
# impressions without a click in that interval are kept with nulls (left outer join).
rows = []
for imp in impressions:
    matched = [c for c in clicks
               if c["ad_id"] == imp["ad_id"] and c["user_id"] == imp["user_id"]
               and c["ts"] - WINDOW_MS <= imp["ts"] <= c["ts"]]
    for c in matched or [None]:
        rows.append({
            "impression_id": imp["impression_id"],
            "ad_id": imp["ad_id"],
            "user_id": imp["user_id"],
            "campaign": imp["campaign"],
            "impression_ts": iso(imp["ts"]),
            "click_id": c["click_id"] if c else None,
            "click_ts": iso(c["ts"]) if c else None,
            "clicked": c is not None,
            "ms_to_click": c["ts"] - imp["ts"] if c else None,
        })
import os
os.makedirs("expected/out", exist_ok=True)
with open("expected/out/attribution.jsonl", "w") as f:
    for r in sorted(rows, key=lambda r: (r["impression_id"], r["click_id"] or "")):
        f.write(json.dumps({k: v for k, v in r.items() if v is not None},
                           separators=(",", ":")) + "\n")
print(f"{len(impressions)} impressions, {len(clicks)} clicks, "
      f"{sum(1 for r in rows if r['clicked'])} attributed clicks, "
      f"{sum(1 for r in rows if not r['clicked'])} impressions without a click")
