#!/bin/bash
# Every row of issue 12's table for one build, one after another (about
# 10 minutes on a 2-core VM), plus the extra rows docs/BENCHMARKS.md shows.
#
#   bench/scripts/issue12-table.sh BUILD_DIR OUT_DIR [extra ...]
#
# BUILD_DIR holds a release build (`cargo build --release --workspace
# --bins`); each row runs that build's own time-loadtest and time-ingest.
# Logs go to OUT_DIR/ROW.log, the key lines to OUT_DIR/summary. Extras:
# overload10x (30,000/s for 60 s), blocksoff, fastoff, tps1000_c (a third
# 1,000 TPS run), idle (an idle devnet's CPU). Only 127.0.0.1: the devnets
# the load generator starts (ports 24200 and up) and an idle devnet on
# 27400 and up, which stops by itself after 45 s.
set -u
B=$(cd "$1" && pwd); O=$2; shift 2; mkdir -p "$O"
LT=$B/target/release/time-loadtest
run() {
  local name=$1; shift
  echo "== $name: $*" | tee -a "$O/summary"
  local s; s=$(date +%s)
  "$@" > "$O/$name.log" 2>&1
  echo "   rc $? in $(( $(date +%s) - s )) s" >> "$O/summary"
  grep -E 'crypto bound:|achieved|finality ms|lost |double spends|of the bound|machine|masternode [0-3] |highest|refused|not sustained' \
    "$O/$name.log" | head -40 >> "$O/summary"
}
idle() {
  local D; D=$(mktemp -d /tmp/idle-XXXX)
  "$B/target/release/time-masternode" devnet --nodes 4 --data-dir "$D" --base-port 27400 --exit-after 45 > "$O/idle.log" 2>&1 &
  local dp=$!
  until grep -q "devnet is up" "$O/idle.log"; do sleep 0.2; kill -0 $dp 2>/dev/null || break; done
  sleep 5
  local pids t1 t2; pids=$(pgrep -P $dp)
  t1=$(for p in $pids; do awk '{print $14+$15}' /proc/$p/stat; done | paste -sd' ')
  sleep 20
  t2=$(for p in $pids; do awk '{print $14+$15}' /proc/$p/stat; done | paste -sd' ')
  echo "== idle devnet: CPU ticks (1/100 s) of each masternode at t and t+20 s: [$t1] [$t2]; threads: $(for p in $pids; do ls /proc/$p/task | wc -l; done | paste -sd' ')" >> "$O/summary"
  wait $dp; rm -rf "$D"
}
rows=(tps1000_a tps1000_b tps1000_nosync tps200 findmax findmax_nosync ingest overload60 idle)
[ $# -gt 0 ] && rows=("$@")
for r in "${rows[@]}"; do case $r in
  tps1000_a|tps1000_b|tps1000_c) run $r "$LT" --devnet 4 --tps 1000 --duration 10s --double-spend-pct 10 --json "$O/$r.json" ;;
  tps1000_nosync) run $r "$LT" --devnet 4 --tps 1000 --duration 10s --double-spend-pct 10 --node-arg=--unsafe-no-sync ;;
  tps200) run $r "$LT" --devnet 4 --tps 200 --duration 10s --double-spend-pct 10 ;;
  findmax) run $r "$LT" --devnet 4 --find-max --tps 1000 --duration 5s ;;
  findmax_nosync) run $r "$LT" --devnet 4 --find-max --tps 1000 --duration 5s --node-arg=--unsafe-no-sync ;;
  ingest) run $r "$B/target/release/time-ingest" --dir "$B/target" ;;
  overload60) run $r "$LT" --devnet 4 --tps 10000 --duration 60s --confirm-wait 0s ;;
  overload10x) run $r "$LT" --devnet 4 --tps 30000 --duration 60s --confirm-wait 0s ;;
  blocksoff) run $r "$LT" --devnet 4 --tps 1000 --duration 10s --double-spend-pct 10 --node-arg=--block-interval-ms=0 --confirm-wait 0s ;;
  fastoff) run $r "$LT" --devnet 4 --tps 1000 --duration 10s --double-spend-pct 10 --node-arg=--fast-path=off ;;
  idle) idle ;;
  *) echo "unknown row $r" >&2; exit 2 ;;
esac; done
