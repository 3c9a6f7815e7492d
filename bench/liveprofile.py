"""Where a live daemon's time goes: py-spy samples `tc-daemon run` while tcpreplay offers one rate.

    python -m bench.liveprofile 50000 docs/live-profile.txt    # root, tcpreplay, py-spy (pip install py-spy)

The daemon captures on a veth pair as in bench/live.py (the corpus's 40 largest
Ethernet captures, looped with --unique-ip). py-spy samples every thread 200
times a second for 10 s in the middle of a 20 s replay, skipping samples where
a thread waits (in poll, on a lock or an event), so a thread's samples over
the 2,000 possible are its busy share; the summary gives that and, per thread,
the statements it was running (the innermost frame in daemon/, and the library
frame under it); the raw collapsed stacks go beside it.
"""
from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import time

from bench.live import DEFAULT_CORPUS, ethernet_captures, start_daemon
from bench.netns import veth_netns
from bench.promtext import free_port


def summarize(raw: str, possible: int, top: int = 15) -> str:
    """Per thread: busy share of the window, then the innermost daemon/ (or library) frame's share."""
    threads = collections.defaultdict(collections.Counter)
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        thread = frames[0]
        leaf = frames[-1]
        # the innermost frame in our code says what the thread was doing for us
        ours = next((f for f in reversed(frames) if "daemon/" in f), leaf)
        threads[thread][ours if ours == leaf else f"{ours} -> {leaf}"] += int(n)
    out = []
    for thread, c in sorted(threads.items(), key=lambda kv: -sum(kv[1].values())):
        total = sum(c.values())
        out.append(f"{thread}: {total} samples, busy {100 * total / possible:.0f} % of the window")
        for what, n in c.most_common(top):
            out.append(f"  {100 * n / total:5.1f} %  {what}")
    return "\n".join(out)


def main(rate: int, out_path: str, seconds: float = 20.0):
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    files, n_pkts = ethernet_captures(DEFAULT_CORPUS)
    tag = f"tcp{os.getpid() % 100000}"
    port = free_port()
    with veth_netns(tag + "ns", tag + "a", tag + "b", mtu=None, ipv6=True) as (ns, a, b):
        daemon, tmp = start_daemon(f"capture:\n  interfaces: [{a}]\nmetrics:\n  listen: 127.0.0.1:{port}\n", port)
        try:
            loops = max(1, int(rate * seconds / n_pkts + 0.999))
            replay = subprocess.Popen(["ip", "netns", "exec", ns, "tcpreplay", "-q", "-i", b, f"--pps={rate}",
                                       f"--loop={loops}", "--unique-ip", "--preload-pcap", *files],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(seconds / 4)
            raw = os.path.join(tmp, "raw.txt")
            subprocess.run([spy, "record", "--pid", str(daemon.pid), "--duration", str(int(seconds / 2)),
                            "--rate", "200", "--threads", "--format", "raw", "--output", raw,
                            "--nonblocking"], check=True, capture_output=True)
            replay.wait()
            text = open(raw).read()
        finally:
            daemon.terminate()
            daemon.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    summary = summarize(text, possible=200 * int(seconds / 2))
    print(summary)
    with open(out_path, "w") as f:
        f.write(f"# python -m bench.liveprofile {rate} {out_path}\n{summary}\n\n# raw collapsed stacks\n{text}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50000, sys.argv[2] if len(sys.argv) > 2 else "live-profile.txt")
