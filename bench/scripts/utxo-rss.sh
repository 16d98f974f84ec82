#!/bin/bash
# RSS and start-up with many UTXOs: a fresh devnet of NODES masternodes
# with 4 wallets of COINS outputs each, then the same devnet started again
# on its data; RSS (and its anonymous part) of each masternode from
# /proc/PID/smaps_rollup 5 s after "devnet is up".
#
#   bench/scripts/utxo-rss.sh target/release/time-masternode OUT_FILE NODES COINS
#
# 1M UTXOs: NODES=4 COINS=250000; 10M: NODES=1 COINS=2500000 (about 1 GB
# of disk). Ports 27400 and up on 127.0.0.1; each devnet stops by itself.
set -u
M=$1; OUT=$2; N=$3; C=$4
D=$(mktemp -d /tmp/utxo-rss-XXXX)
for phase in fresh restart; do
  log=$D.$phase.log
  start=$(date +%s%N)
  "$M" devnet --nodes "$N" --data-dir "$D/net" --coins "$C" --wallets 4 --base-port 27400 --exit-after $((40 + C / 40000)) > "$log" 2>&1 &
  pid=$!
  until grep -q "devnet is up" "$log"; do sleep 0.2; kill -0 $pid 2>/dev/null || { tail -3 "$log"; break; }; done
  up=$(date +%s%N)
  sleep 5
  r=$(for p in $(pgrep -P $pid); do grep -E '^(Rss|Anonymous)' /proc/$p/smaps_rollup | awk '{printf "%s %d MB ", $1, $2/1024}'; echo -n "| "; done)
  echo "$N masternodes, $((4 * C)) UTXOs, $phase: up after $(( (up - start) / 1000000 )) ms; $r" | tee -a "$OUT"
  wait $pid
  rm -f "$log"
done
rm -rf "$D"
