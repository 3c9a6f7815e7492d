"""Frame by frame or a ring block at once: the pipeline's cost per frame against the block's size.

    python -m bench.blocks [OUT.json]     # default docs/bench-blocks.json

The corpus's largest Ethernet captures (those the live ladder replays) go
through the flow-mode pipeline twice before timing, so that their flows are
decided (the line-rate case), then in chunks of N frames laid out as a ring
block lays them: `Pipeline._frames_at_once` (numpy over the block) against
`Pipeline._packet` per frame. Model time is left out: both paths send the same
packets to it. What it decides: pipeline.block_frames, the block size from
which the daemon decodes at once.
"""
import gc
import json
import os
import sys
import time

import numpy as np

from bench.live import DEFAULT_CORPUS, ethernet_captures
from bench.machine import describe
from daemon import config
from daemon.capture.pcapfile import PcapReader
from daemon.pipeline import Pipeline

SIZES = (1, 8, 32, 64, 96, 128, 160, 192, 256, 384, 512)
REPEATS = 3


def frames_of(corpus):
    files = ethernet_captures(corpus)[0] if os.path.isdir(corpus) else []
    if not files:  # a fresh clone without the corpus: the bundled captures
        from tests.daemon_proc import SAMPLES
        files = [os.path.join(SAMPLES, f) for f in sorted(os.listdir(SAMPLES)) if f.endswith(".pcap")]
    out = []
    for f in files:
        with PcapReader(f) as r:
            out += [bytes(fr) for lt, _, fr in r if lt == 1]
    return out


def as_block(frames):
    """Frames laid out as a ring block hands them to the pipeline: one buffer (numpy and memoryview of
    it), where each frame starts, and each one's length."""
    buf = b"".join(frames)
    at = np.cumsum([0] + [len(f) for f in frames[:-1]])
    return np.frombuffer(buf, np.uint8), memoryview(buf), at, np.array([len(f) for f in frames])


def chunks(frames, size):
    return [(*as_block(frames[i:i + size]), i + np.arange(len(frames[i:i + size])))
            for i in range(0, len(frames), size)]


def timed(p, frames, size, base):
    """Seconds per frame for one pass over `frames` at `base` seconds (capture time), model excluded.
    The cyclic GC is off while timing, as the daemon runs it on its own schedule (service.py)."""
    gc.collect()
    gc.disable()
    if size is None:
        t0 = time.perf_counter()
        for i, fr in enumerate(frames):
            p._packet(1, base + i * 1e-6, fr, 0.0)
        dt = time.perf_counter() - t0
    else:
        parts = chunks(frames, size)
        t0 = time.perf_counter()
        for buf, view, at, caplen, idx in parts:
            p._frames_at_once(1, buf, view, at, caplen, base + idx * 1e-6)
        dt = time.perf_counter() - t0
    gc.enable()
    while p._queue:
        p._classify_batch()
    return dt / len(frames)


def main(out=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "bench-blocks.json")):
    frames = frames_of(DEFAULT_CORPUS)
    print(f"{len(frames)} frames, mean {sum(map(len, frames)) / len(frames):.0f} bytes", file=sys.stderr)
    cfg = config.from_dict({"pipeline": {"queue_packets": 1 << 20}})
    p = Pipeline(source=[], config=cfg, threaded=False)
    for k in range(2):  # decide the flows first: at line rate nearly every packet's flow is decided
        timed(p, frames, None, 100.0 * k)
    rows, base = [], 200.0
    print(f"{'frames per block':>16} {'frame by frame µs':>18} {'at once µs':>11} {'ratio':>6}")
    for size in SIZES:
        one, many = [], []
        for _ in range(REPEATS):  # interleaved, the best of each: the least disturbed pass
            one.append(timed(p, frames, None, base))
            many.append(timed(p, frames, size, base + 100))
            base += 200
        a, b = min(one) * 1e6, min(many) * 1e6
        rows.append(dict(block_frames=size, frame_by_frame_us=round(a, 3), at_once_us=round(b, 3)))
        print(f"{size:>16} {a:>18.2f} {b:>11.2f} {b / a:>6.2f}")
    res = dict(machine=describe(), frames=len(frames), rows=rows,
               command="python -m bench.blocks", model=p.model.entry["name"])
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {out}", file=sys.stderr)
    return res


if __name__ == "__main__":
    main(*sys.argv[1:])
