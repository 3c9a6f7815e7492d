"""A full flow table turning over: does RSS hold? (glibc's heap, service.tune_malloc)

    python -m bench.heapchurn 600000           # as the daemon runs: tune_malloc first
    python -m bench.heapchurn 600000 --plain   # glibc's defaults

Flows of one bare packet each go through the pipeline's default 65,536-flow table, so
from flow 65,536 on every new flow evicts the oldest. Prints RSS when the table fills, at
131,072 flows, 262,144 and at the end, what malloc_trim(0) gives back after, and, last,
RSS growth in bytes from 131,072 flows to the end (tests/test_service.py reads it).
"""
import argparse
import ctypes
import gc

from bench.flowmem import frame
from bench.machine import rss_bytes
from daemon import config, service
from daemon.packet import LINKTYPE_ETHERNET
from daemon.pipeline import Pipeline


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("flows", type=int, nargs="?", default=600000)
    ap.add_argument("--plain", action="store_true", help="glibc's default heap settings (no tune_malloc)")
    a = ap.parse_args()
    if not a.plain and not service.tune_malloc():
        raise SystemExit("heapchurn: no glibc here; tune_malloc does nothing")
    p = Pipeline(source=[], config=config.Config(), threaded=False)
    marks, seen = (p.table.max_flows, 131072, 262144, a.flows - 1), {}
    for i in range(a.flows):
        p._packet(LINKTYPE_ETHERNET, 1.0 + i * 1e-5, frame(i, b""), 0.0)
        if i in marks:
            gc.collect()
            seen[i] = rss_bytes()
    assert len(p.table) == p.table.max_flows
    print(" ".join(f"{i + 1} flows: {r / 2**20:.1f} MiB;" for i, r in sorted(seen.items())))
    ctypes.CDLL(None).malloc_trim(0)
    print(f"after malloc_trim(0): {rss_bytes() / 2**20:.1f} MiB")
    print(seen[a.flows - 1] - seen[131072])


if __name__ == "__main__":
    main()
