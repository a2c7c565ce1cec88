#!/usr/bin/env python3
"""Generates the payments example's data (deterministic: seed 11):

- data/payments.jsonl: 2,000 payments over two hours, up to 10 s out of order, with
  planted bad records: malformed JSON lines, non-positive amounts, an unknown currency,
  an unknown merchant, and payments sent twice (an upstream retry);
- data/merchants.csv: the merchants (reference data);
- data/fx_rates.jsonl: a changelog of rates to EUR: a version per currency every 20
  minutes (valid from its `valid_from`); a payment takes the rate valid at its time.

Prints what the job must find: booked payments, and dead letters by reason.
"""
import argparse
import datetime
import json
import os
import random

args = argparse.ArgumentParser(description=__doc__.split("\n")[0])
args.add_argument("--count", type=int, default=2000, help="payments (default 2000)")
args.add_argument("--out", default=".", help="folder that gets data/ (default: here)")
args = args.parse_args()
os.makedirs(os.path.join(args.out, "data"), exist_ok=True)

random.seed(11)
base = datetime.datetime(2026, 3, 2, 9, 0, 0, tzinfo=datetime.timezone.utc)
rates = {"EUR": 1.0, "USD": 0.92, "GBP": 1.17, "JPY": 0.0061}
base_ms = int(base.timestamp() * 1000)
# Versions: one a day before the first payment, then every 20 minutes.
versions = {c: [(base_ms - 86_400_000, r)] for c, r in rates.items()}
for c in rates:
    if c == "EUR":
        continue
    r = rates[c]
    for step in range(1, 8):
        r = round(r * random.uniform(0.98, 1.02), 6)
        versions[c].append((base_ms + step * 1_200_000, r))


def rate_at(currency, ms):
    return max((v for v in versions[currency] if v[0] <= ms), key=lambda v: v[0])[1]
merchants = [(f"m{i:02d}", f"Merchant {i:02d}", random.choice(["DE", "FR", "NL", "IE", "ES"]),
              random.choice(["5411", "5812", "5999", "4121"])) for i in range(1, 21)]
lines, booked, dead = [], 0, {"malformed": 0, "rule": 0, "merchant": 0}
total_eur = 0.0
sent = []
t = 0
for i in range(args.count):
    t += random.randint(0, 7_000)
    ms = int(base.timestamp() * 1000) + t - random.randint(0, 10_000)
    ts = datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if i % 250 == 17:
        lines.append('{"payment_id": "pay-%05d", "ts": ' % i)
        dead["malformed"] += 1
        continue
    if sent and random.random() < 0.02:
        lines.append(random.choice(sent))  # the same payment again
        continue
    merchant = random.choice(merchants)[0] if i % 333 != 5 else "m99"
    currency = random.choice(list(rates)) if i % 400 != 9 else "XXX"
    amount = round(random.uniform(1, 900), 2) if i % 150 != 3 else -round(random.uniform(0, 50), 2)
    rec = {"payment_id": f"pay-{i:05d}", "ts": ts, "merchant_id": merchant,
           "amount": amount, "currency": currency, "card_country": random.choice(["DE", "FR", "US", "GB"])}
    line = json.dumps(rec)
    lines.append(line)
    sent.append(line)
    if amount <= 0 or currency == "XXX":
        dead["rule"] += 1
    elif merchant == "m99":
        dead["merchant"] += 1
    else:
        booked += 1
        total_eur += round(amount * rate_at(currency, ms), 2)
with open(os.path.join(args.out, "data/payments.jsonl"), "w") as f:
    f.write("\n".join(lines) + "\n")
with open(os.path.join(args.out, "data/merchants.csv"), "w") as f:
    f.write("merchant_id,merchant_name,merchant_country,mcc\n")
    for m in merchants:
        f.write(",".join(m) + "\n")
with open(os.path.join(args.out, "data/fx_rates.jsonl"), "w") as f:
    for c, vs in versions.items():
        for ms, r in vs:
            when = datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            f.write(json.dumps({"currency": c, "valid_from": when, "eur_rate": r}) + "\n")
print(f"booked payments: {booked}")
print(f"dead letters: {dead}")
print(f"total amount_eur of the booked payments: {total_eur:.2f}")
