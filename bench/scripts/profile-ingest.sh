#!/usr/bin/env bash
# Profiles one time-ingest run with perf (cpu-clock samples with DWARF call
# chains: this VM has no hardware counters) and prints the functions that
# take the time inside the timed loop. Extra arguments go to time-ingest.
#
#   bench/scripts/profile-ingest.sh --sync no-sync --txs 100000
#
# Needs `perf` (Debian: apt-get install -y linux-perf) and a release build
# (`cargo build --release -p time-bench`; the release profile keeps line
# debug info). Writes ingest.perf.data and ingest.perf.txt in $OUT (default
# a temporary directory).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
target="${CARGO_TARGET_DIR:-$here/../../target}"
bin="$target/release/time-ingest"
out="${OUT:-$(mktemp -d)}"
[ -x "$bin" ] || { echo "build first: cargo build --release -p time-bench ($bin missing)" >&2; exit 1; }
perf record -e cpu-clock -F 999 --call-graph dwarf,32768 -o "$out/ingest.perf.data" \
    "$bin" --crypto-secs 0.2 "$@" | tee "$out/ingest.txt"
perf script -i "$out/ingest.perf.data" -F tid,ip,sym 2>/dev/null > "$out/ingest.perf.txt"
python3 "$here/perf-summary.py" --top 40 < "$out/ingest.perf.txt"
echo "profile data in $out"
