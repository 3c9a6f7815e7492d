"""Memory per flow in the pipeline: synthetic UDP flows, RSS before and after.

    python -m bench.flowmem 50000 3    # 50,000 flows, 3 payload packets each (decided in flow mode)
    python -m bench.flowmem 50000 1    # 1 payload packet each (undecided until they end)
    python -m bench.flowmem 50000 0    # 1 packet without payload each (a scan's probes: never queued)

The flow table is what grows with traffic (flows live for their idle timeout),
so bytes per flow decide the daemon's RSS at high rates (docs/performance.md).
"""
import gc
import struct
import sys
import time

from bench.machine import rss_bytes as rss
from daemon import config
from daemon.packet import LINKTYPE_ETHERNET
from daemon.pipeline import Pipeline


def frame(i: int, payload: bytes = b"x" * 100) -> bytes:
    """Ethernet/IPv4/UDP from 10.x.y.z (one source address per flow) to 8.8.8.8:53."""
    udp = struct.pack("!HHHH", 40000 + i % 20000, 53, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     struct.pack("!I", 0x0A000000 + i), b"\x08\x08\x08\x08") + udp
    return b"\x00" * 12 + b"\x08\x00" + ip


def main(n_flows: int, per_flow: int):
    p = Pipeline(source=[], config=config.Config(), threaded=False)
    gc.collect()
    before = rss()
    for i in range(n_flows):
        f = frame(i) if per_flow else frame(i, b"")
        for _ in range(max(per_flow, 1)):
            p._packet(LINKTYPE_ETHERNET, 1.0, f, time.monotonic())
        if len(p._queue) >= p.batch_size:
            p._classify_batch()
    while p._queue:
        p._classify_batch()
    gc.collect()
    what = f"{per_flow} payload packets" if per_flow else "1 packet without payload"
    print(f"{n_flows} flows x {what}: {(rss() - before) / n_flows:.0f} bytes per flow "
          f"({len(p.table)} in the table)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50000, int(sys.argv[2]) if len(sys.argv) > 2 else 3)
