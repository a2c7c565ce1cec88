#!/usr/bin/env bash
# Queries the running stock-prices job's state over HTTP: the latest price, the session
# figures and the last completed minute's VWAP of a symbol, once a second.
#   examples/stock_prices/query.sh AAPL          # until Ctrl-C
#   examples/stock_prices/query.sh MSFT 3        # three times
#   WEIR_URL=http://127.0.0.1:8081 ...           # where the job serves (its `http:`)
set -euo pipefail
symbol="${1:-AAPL}"
times="${2:-0}"
url="${WEIR_URL:-http://127.0.0.1:8081}/api/jobs/stock-prices/state"
n=0
while :; do
  for step in last_price session vwap_1m; do
    printf '%-10s ' "$step"
    curl -sS "$url/$step?key=$symbol"
    echo
  done
  n=$((n + 1))
  if [ "$times" -gt 0 ] && [ "$n" -ge "$times" ]; then break; fi
  sleep 1
done
