#!/bin/bash
# CPU and wake-ups per thread of one masternode, idle or under load.
#
#   bench/scripts/thread-wakeups.sh BUILD_DIR idle [EXTRA_DEVNET_ARGS...]
#   bench/scripts/thread-wakeups.sh BUILD_DIR TPS
#
# idle: starts `time-masternode devnet` (4 masternodes on 127.0.0.1, ports
# from 25300; e.g. `--node-arg=--block-interval-ms=600000` for mainnet
# block pacing), waits 12 s, then prints each masternode's CPU in % of a
# core over 20 s and masternode 0's threads. TPS: runs `time-loadtest
# --devnet 4 --tps TPS --duration 20s --double-spend-pct 10` and reads
# masternode 0's threads over 6 s from t = 12 s. Threads: ms of CPU per
# second and wake-ups per second (voluntary + nonvoluntary context
# switches, from /proc). Only processes this script started are read; all
# of them stop by themselves.
set -u
# BUILD_DIR is a checkout (its target/release is used) or a directory
# holding the two binaries.
if [ -d "$1/target/release" ]; then B=$(cd "$1/target/release" && pwd); else B=$(cd "$1" && pwd); fi
MODE=${2:-idle}
shift 2 2>/dev/null || shift $#
OUT=$(mktemp -d /tmp/thread-wakeups-XXXX)
threads() { for x in /proc/$1/task/*; do echo "$(basename "$x"):$(tr ' ' _ < "$x/comm") $(awk '{print $14+$15}' "$x/stat") $(grep -E '^(voluntary|nonvoluntary)_ctxt' "$x/status" | awk '{s+=$2} END {print s}')"; done | sort; }
report() { join <(echo "$1") <(echo "$2") | awk -v s="$3" '{printf "  %-24s ms/s %5.0f  wake-ups/s %7.1f\n", $1, ($4-$2)*10/s, ($5-$3)/s}'; }
if [ "$MODE" = idle ]; then
    "$B/time-masternode" devnet --data-dir "$OUT/devnet" --fresh --base-port 25300 --exit-after 40 "$@" > "$OUT/devnet.log" 2>&1 &
    DV=$!
    sleep 12
    PIDS=$(pgrep -P $DV -f "time-masternode run")
    P0=$(echo $PIDS | awk '{print $1}')
    [ -n "$P0" ] || { echo "no masternode under $DV"; cat "$OUT/devnet.log"; exit 1; }
    ticks() { for p in $PIDS; do awk '{print $14+$15}' /proc/$p/stat; done; }
    A=$(ticks); TA=$(threads $P0); sleep 20; Z=$(ticks); TZ=$(threads $P0)
    echo "idle CPU per masternode (% of a core): $(paste <(echo "$A") <(echo "$Z") | awk '{printf "%.2f ", ($2-$1)/20}')"
    echo "masternode 0 by thread:"
    report "$TA" "$TZ" 20
    wait $DV
else
    "$B/time-loadtest" --devnet 4 --tps "$MODE" --duration 20s --double-spend-pct 10 > "$OUT/loadtest.log" 2>&1 &
    LT=$!
    sleep 12
    MN=$(pgrep -P $LT -f time-masternode | head -1)
    [ -n "$MN" ] || { echo "no masternode under $LT"; cat "$OUT/loadtest.log"; exit 1; }
    TA=$(threads $MN); sleep 6; TZ=$(threads $MN)
    wait $LT
    grep -E 'finality ms|achieved' "$OUT/loadtest.log"
    echo "masternode 0 by thread:"
    report "$TA" "$TZ" 6
fi
rm -rf "$OUT"
