#!/usr/bin/env python3
# The disk's fdatasync latency, as docs/BENCHMARKS.md reports it: random
# 4 KiB page writes + one fdatasync (1, 16, 64, 128 pages; LMDB's case)
# and one sequential 4 KiB write into written zeros + fdatasync (the
# write-ahead log's case), in a 256 MiB file in DIR (removed after).
#
#   python3 bench/scripts/disk-sync.py target
import os, random, sys, time

d = sys.argv[1] if len(sys.argv) > 1 else "."
p = os.path.join(d, "disk-sync.tmp")
SZ = 256 << 20
fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
try:
    zeros = b"\0" * (1 << 20)
    for off in range(0, SZ, 1 << 20):
        os.pwrite(fd, zeros, off)
    os.fsync(fd)
    buf = os.urandom(4096)
    for n in (1, 16, 64, 128):
        lat = []
        for _ in range(200 if n < 64 else 100):
            offs = random.sample(range(SZ // 4096), n)
            t = time.perf_counter()
            for o in offs:
                os.pwrite(fd, buf, o * 4096)
            os.fdatasync(fd)
            lat.append((time.perf_counter() - t) * 1e3)
        lat.sort()
        print(f"{n:4d} random pages + fdatasync: p50 {lat[len(lat)//2]:.2f} ms  p90 {lat[len(lat)*9//10]:.2f} ms")
    lat = []
    for i in range(500):
        t = time.perf_counter()
        os.pwrite(fd, buf, i * 4096)
        os.fdatasync(fd)
        lat.append((time.perf_counter() - t) * 1e6)
    lat.sort()
    print(f"sequential 4 KiB into written zeros + fdatasync: p50 {lat[250]:.0f} us  p99 {lat[495]:.0f} us")
finally:
    os.close(fd)
    os.remove(p)
