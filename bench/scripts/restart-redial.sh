#!/bin/bash
# How soon a masternode that was killed (`kill -9`) and started again is
# linked to all its peers: four masternodes of a devnet on 127.0.0.1
# (ports from 25400), started one by one (not under `time-masternode
# devnet`, which stops every node when one dies); masternode I (default:
# the one with the greatest key, which dials nobody and so waits for its
# peers to notice and redial) is killed and started again 1 s later,
# ROUNDS times, and its
# `timecoin_peers_connected` is read every 50 ms (refreshed by the node
# once a second), for at most 15 s per restart.
#
#   bench/scripts/restart-redial.sh BUILD_DIR [I] [ROUNDS]
#
# Stops every process it started, by pid, and removes its directory.
set -u
if [ -d "$1/target/release" ]; then B=$(cd "$1/target/release" && pwd); else B=$(cd "$1" && pwd); fi
I=${2:-greatest}; ROUNDS=${3:-3}
D=$(mktemp -d /tmp/restart-redial-XXXX)
"$B/time-masternode" devnet --data-dir "$D" --fresh --base-port 25400 --init-only > "$D/init.log" 2>&1 || { cat "$D/init.log"; exit 1; }
declare -a PID
start() { "$B/time-masternode" run --config "$D/mn$1/node.toml" >> "$D/mn$1/out.log" 2>&1 & PID[$1]=$!; }
stop_all() { for p in "${PID[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$D"; }
trap stop_all EXIT
for n in 0 1 2 3; do start $n; done
if [ "$I" = greatest ]; then
    for _ in $(seq 100); do
        [ "$(cat "$D"/mn*/out.log | grep -c 'masternode listening')" -ge 4 ] && break; sleep 0.1
    done
    I=$(for n in 0 1 2 3; do echo "$(grep -o 'key=[0-9a-f]*' "$D/mn$n/out.log" | head -1) $n"; done | sort | tail -1 | awk '{print $2}')
fi
M=$(grep metrics_listen "$D/mn$I/node.toml" | sed 's/.*"\(.*\)"/\1/')
peers() { curl -s --max-time 0.2 "http://$M/metrics" | awk '/^timecoin_peers_connected /{print $2}'; }
for _ in $(seq 100); do [ "$(peers)" = 3 ] && break; sleep 0.1; done
echo "masternode $I linked to $(peers) peers; restarting it $ROUNDS times"
for r in $(seq "$ROUNDS"); do
    kill -9 "${PID[$I]}"; wait "${PID[$I]}" 2>/dev/null; sleep 1
    start "$I"
    t0=$(date +%s%N); seen=""
    for _ in $(seq 300); do
        v=$(peers)
        [ "$v" = 3 ] && { seen=$(( ($(date +%s%N) - t0) / 1000000 )); break; }
        sleep 0.05
    done
    echo "  restart $r: ${seen:-more than 15000} ms until 3 peers"
    sleep 2
done
