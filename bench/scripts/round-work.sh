#!/bin/bash
# How long masternode 0's core rounds hold payments in flight under load:
# runs `time-loadtest --devnet 4 --tps TPS --duration 20s`, scrapes
# masternode 0's metrics at t = 6 s and t = 18 s and prints, for that 12 s
# window, the distribution of `timecoin_round_work_seconds` (the core's work
# on a round before its commit) and `timecoin_round_sync_seconds` (the
# commit's log append and fdatasync), plus the load test's finality line.
#
#   bench/scripts/round-work.sh BUILD_DIR [TPS] [extra time-loadtest args]
#
# BUILD_DIR holds time-loadtest and time-masternode (e.g. target/release).
# Only 127.0.0.1: the load generator's own devnet.
set -u
B=$(cd "$1" && pwd); TPS=${2:-1000}; shift; shift || true
OUT=$(mktemp -d /tmp/round-work-XXXX)
"$B/time-loadtest" --devnet 4 --tps "$TPS" --duration 20s --double-spend-pct 10 \
  --data-dir "$OUT/dd" "$@" > "$OUT/loadtest.log" 2>&1 &
LT=$!
for _ in $(seq 1 100); do [ -f "$OUT/dd/endpoints.json" ] && break; sleep 0.1; done
URL=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["masternodes"][0]["metrics_url"])' "$OUT/dd/endpoints.json")
sleep 6; curl -s "$URL" > "$OUT/m1"
sleep 12; curl -s "$URL" > "$OUT/m2"
wait $LT
grep -E 'finality ms' "$OUT/loadtest.log"
python3 - "$OUT/m1" "$OUT/m2" <<'PY'
import re, sys
def read(p):
    d = {}
    for line in open(p):
        m = re.match(r'(timecoin_round_(?:work|sync)_seconds)_(bucket|count|sum)(?:\{le="([^"]+)"\})? (\S+)', line)
        if m:
            d[(m.group(1), m.group(2), m.group(3))] = float(m.group(4))
    return d
a, b = read(sys.argv[1]), read(sys.argv[2])
for name in ("timecoin_round_work_seconds", "timecoin_round_sync_seconds"):
    n = b.get((name, "count", None), 0) - a.get((name, "count", None), 0)
    s = b.get((name, "sum", None), 0) - a.get((name, "sum", None), 0)
    if n <= 0:
        print(f"{name}: no rounds"); continue
    les = sorted({k[2] for k in b if k[0] == name and k[1] == "bucket"}, key=lambda x: float(x.replace("+Inf", "inf")))
    parts = []
    prev = 0
    for le in les:
        c = b[(name, "bucket", le)] - a.get((name, "bucket", le), 0)
        parts.append(f"<={le}: {c - prev:.0f}")
        prev = c
    over = lambda t: n - (b[(name, "bucket", t)] - a.get((name, "bucket", t), 0))
    print(f"{name}: {n:.0f} rounds, mean {1000 * s / n:.3f} ms; over 2 ms {over('0.002'):.0f}, over 5 ms {over('0.005'):.0f}, over 10 ms {over('0.01'):.0f}")
    print("   " + ", ".join(parts))
PY
