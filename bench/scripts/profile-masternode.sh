#!/bin/bash
# Where one masternode's CPU goes under load: starts a 4-masternode load
# test at TPS payments/s for 20 s, records masternode 0 with perf for 8 s
# from t = 12 s (cpu-clock samples, no call chains), and prints its CPU by
# thread (from /proc) and by kind of work (symbols grouped by what they do).
#
#   bench/scripts/profile-masternode.sh BUILD_DIR [TPS]
#
# Needs `perf` and a release build in BUILD_DIR (release keeps debug info).
# Only 127.0.0.1 (the load generator's devnet); perf attaches to the
# masternode this script's load generator started, by its pid.
set -u
B=$(cd "$1" && pwd); TPS=${2:-1000}
OUT=$(mktemp -d /tmp/profile-mn-XXXX)
"$B/target/release/time-loadtest" --devnet 4 --tps "$TPS" --duration 20s --double-spend-pct 10 > "$OUT/loadtest.log" 2>&1 &
LT=$!
sleep 12
MN=$(pgrep -P $LT -f time-masternode | head -1)
[ -n "$MN" ] || { echo "no masternode under $LT"; cat "$OUT/loadtest.log"; exit 1; }
ticks() { for t in /proc/$MN/task/*; do echo "$(cat $t/comm) $(awk '{print $14+$15}' $t/stat)"; done; }
ticks > "$OUT/t1"
perf record -e cpu-clock -F 999 -p "$MN" -o "$OUT/perf.data" -- sleep 8 2> "$OUT/perf.err"
ticks > "$OUT/t2"
wait $LT
grep -E 'finality ms|achieved|masternode 0 |machine' "$OUT/loadtest.log"
echo "CPU by thread over the 8 s (ms of CPU per second):"
join <(sort "$OUT/t1") <(sort "$OUT/t2") | awk '{ d = ($3 - $2) * 10 / 8; if (d > 0) printf "  %-16s %6.0f\n", $1, d }' | sort -k2 -n -r
perf report -i "$OUT/perf.data" --no-children --sort sym --stdio -g none 2>/dev/null | python3 -c '
import re, sys
cats = [
    ("ed25519 (curve25519, sha512)", r"curve25519|sha2::|subtle::|FieldElement|Scalar|edwards|ed25519"),
    ("context switches (scheduler, irq unlock)", r"finish_task_switch|_raw_spin_unlock_irq|irqentry_exit|schedule|sched_yield|futex"),
    ("LMDB (mdb_*)", r"mdb_"),
    ("file writes and syncs (ext4, block layer, virtio)", r"ext4|blk_|iowrite|virt|mpage|folio|filemap|bio|mark_buffer|generic_perform_write|xas_"),
    ("network stack", r"udp|tcp|ip_|skb|softirq|net_|sock|__dev|loopback|napi"),
    ("malloc, free, memcpy", r"malloc|free|memmove|memcpy|memset|unlink_chunk|tcache|_int_"),
    ("blake3 and hash maps", r"blake3|Hasher|hash_one|hashbrown"),
]
tot = {c: 0.0 for c, _ in cats}; other = []
for line in sys.stdin:
    m = re.match(r"\s*([\d.]+)%\s+(.*)", line)
    if not m:
        continue
    p, s = float(m.group(1)), m.group(2)
    for c, r in cats:
        if re.search(r, s):
            tot[c] += p
            break
    else:
        other.append((p, s.strip()[:100]))
print("samples by kind of work:")
for c, _ in cats:
    print(f"  {tot[c]:5.1f} %  {c}")
print(f"  {sum(p for p, _ in other):5.1f} %  other; the largest:")
for p, s in other[:8]:
    print(f"           {p:4.1f} %  {s}")
'
rm -rf "$OUT"
