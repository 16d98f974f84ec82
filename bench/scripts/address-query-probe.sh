#!/bin/bash
# Does an address query occupy the core? Starts a 1M-UTXO devnet (4 wallets
# of 250,000 outputs) with BINARY in DIR, then times 20 `getmempoolinfo`
# (a StatusQuery the core thread answers) idle and while 4 loops of 25
# `listunspent` for wallet 0's address run against the same node.
#
#   bench/scripts/address-query-probe.sh target/release/time-masternode /tmp/probe after [--fresh]
#
# Ports 27400-27420 on 127.0.0.1; the devnet stops itself after 120 s and is
# stopped with SIGINT (by its pid) when the probe ends.
set -u
B=$1; D=$2; L=$3; shift 3
CLI=$(dirname "$B")/time-cli
OUT=$(mktemp)
"$B" devnet --data-dir "$D" --coins 250000 --wallets 4 --base-port 27400 --exit-after 120 "$@" > "$OUT" 2>&1 &
P=$!
until grep -q "devnet is up" "$OUT"; do sleep 0.2; kill -0 $P || { cat "$OUT"; exit 1; }; done
sleep 3
ADDR=$(python3 -c "import json;print(json.load(open('$D/wallets/wallet0.json'))['address'])")
ms() { echo $(( ($2 - $1) / 1000000 )); }
t0=$(date +%s%N); n=$("$CLI" --devnet "$D" --node 0 listunspent "$ADDR" | grep -c '"txid"'); t1=$(date +%s%N)
echo "$L: one listunspent ($n outputs answered): $(ms $t0 $t1) ms"
t0=$(date +%s%N); for i in $(seq 20); do "$CLI" --devnet "$D" --node 0 getmempoolinfo >/dev/null; done; t1=$(date +%s%N)
echo "$L: 20 getmempoolinfo idle: $(ms $t0 $t1) ms"
LP=()
for k in 1 2 3 4; do
  ( for i in $(seq 25); do "$CLI" --devnet "$D" --node 0 listunspent "$ADDR" >/dev/null; done ) &
  LP+=($!)
done
sleep 0.5
t0=$(date +%s%N); for i in $(seq 20); do "$CLI" --devnet "$D" --node 0 getmempoolinfo >/dev/null; done; t1=$(date +%s%N)
echo "$L: 20 getmempoolinfo during 4 listunspent loops: $(ms $t0 $t1) ms"
wait "${LP[@]}"; t3=$(date +%s%N)
echo "$L: the 100 listunspent done $(ms $t0 $t3) ms after the timed getmempoolinfo started"
kill -INT $P; wait $P
rm -f "$OUT"
