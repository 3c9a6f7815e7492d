"""A capture file replayed as a live source: as fast as possible or at its own pace.

`tc-daemon run --pcap FILE` (or capture.backend: pcap) feeds this through the
live pipeline, threads and all, so tests and benchmarks exercise exactly
what runs on an interface. Timestamps are the replay's wall clock
(monotonic), like a live capture's, not the file's.
"""
from __future__ import annotations

import time

from .pcapfile import PcapReader

IDLE_TICK = 0.25  # s: a long gap in the capture still lets the loop see its stop flag


class ReplaySource:
    live = True
    finite = True  # the pipeline ends all flows when the file ends

    def __init__(self, path: str, speed: float = 0.0, name: str = "replay"):
        self.path, self.speed, self.name = path, speed, name
        self.reader = PcapReader(path)  # CaptureError now, not in the capture thread
        self.errors = self.reader.errors

    def __iter__(self):
        speed = self.speed
        t0 = time.monotonic()
        f0 = None
        try:
            for lt, ts, frame in self.reader:
                if speed > 0:
                    if f0 is None:
                        f0 = ts
                    while True:
                        wait = t0 + (ts - f0) / speed - time.monotonic()
                        if wait <= 0:
                            break
                        if wait > IDLE_TICK:
                            time.sleep(IDLE_TICK)
                            yield None
                        else:
                            time.sleep(wait)
                yield lt, time.monotonic(), frame
        finally:
            self.reader.close()

    def close(self):
        self.reader.close()
