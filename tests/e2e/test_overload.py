"""Overload: far more packets than the model can take, for 30 s; the daemon must bend, count and recover.

The daemon runs in packet mode (every payload packet goes through the model)
with the largest shipped model, a small classifier queue and a small socket
buffer, so classification is the bottleneck by a wide margin; tcpreplay sends
corpus captures at top speed, in a loop, with new addresses every loop (so the
flow table fills and evicts too). Throughout the burst, every second: /metrics
answers, counters only go up, and RSS stays under a bound computed from the
config (queue, flow table and batch sizes times what one entry costs, plus a
fixed allowance), above the RSS measured when the daemon was ready.

Afterwards, the counters must account for every frame (no silent loss):

  frames the interface received = tc_daemon_captured_packets_total
                                 + tc_daemon_kernel_drops_total
  tc_daemon_captured_packets_total = sum(tc_daemon_packets_total)       (counted under a class)
                                   + sum(tc_daemon_skipped_packets_total) (not usable IP)

once every flow has ended (packets of a flow in flight are counted when the
model's answer comes back). Packets that skipped the model because the queue was
full are in tc_daemon_packets_total under their flow's class and are also
counted, by reason, in tc_daemon_dropped_packets_total; the model's own
counters say how many it scored: batch_size_sum = decision_latency_count, and
scored + skipped-the-model <= captured (the rest are bare packets: no payload).

Then a modest replay (300 packets/s) must go through with zero new drops of
any kind. Nothing here asserts how long anything took.
"""
import json
import re
import subprocess
import time

import pytest

from daemon import config
from daemon.capture import afpacket as A
from daemon.features import N_BYTES
from tests.daemon_proc import local_capture, Daemon, by_label, free_port, run_cli, total, write_config
from bench.netns import rx_packets, sh

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BURST_SECONDS = 30
QUEUE = 256          # pipeline.queue_packets
BATCH = 64           # pipeline.batch_size
MAX_FLOWS = 2048     # pipeline.max_flows
RCVBUF = 256 << 10   # capture.rcvbuf_bytes: small, so the kernel drops too
# What one item costs in the daemon's heap, measured with tracemalloc (a queued packet: ~1.7 KiB, its payload
# copy of up to N_BYTES, the _Entry and its trail; a flow: ~0.9 KiB, Flow, key, _State, probability sums),
# doubled for allocator overhead and fragmentation.
ENTRY_COST = 2 * (N_BYTES + 256)
FLOW_COST = 2 * 1024
# the batch buffer and the model's input/output copies (uint8 and float32)
BATCH_COST = BATCH * N_BYTES * 16
# not proportional to any setting: the first inference's arena, thread stacks, histogram and HTTP buffers,
# the interpreter's own caches
FIXED_ALLOWANCE = 24 << 20
BURST_CAPTURES = ("telegram.pcap", "dropbox.pcap", "whatsapp.pcap")
CALM_CAPTURE = "telegram.pcap"  # 1566 frames
CALM_RATE = 300
# the most frames a ring block holds: a block's bytes over the smallest slot (the 48-byte frame header,
# the link-layer address, a minimum frame, aligned to 16: at least 128 bytes)
FRAMES_PER_BLOCK = A.RING_BLOCK // 128


def largest_model() -> dict:
    """The largest model the default memory budget admits (what an operator runs by default)."""
    r = run_cli("models", "list", "--format", "json")
    assert r.returncode == 0, r.stderr
    budget = config.Config().model.memory_budget
    fits = [e for e in json.loads(r.stdout) if budget is None or e["peak_memory_bytes"] <= budget]
    return max(fits, key=lambda e: e["params"])


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def counters(vals: dict) -> dict:
    return {k: v for k, v in vals.items() if re.match(r"tc_daemon_\w+(_total|_count|_sum)(\{|$)", k)}


def test_overload_then_calm(netns, tmp_path):
    ns, a, b = netns
    model = largest_model()
    port = free_port()
    cfg = write_config(str(tmp_path / "config.yaml"),
                       f"capture:\n  interfaces: [{a}]\n  ignore_outgoing: true\n  rcvbuf_bytes: {RCVBUF}\n"
                       f"model:\n  name: {model['name']}\n"
                       f"pipeline:\n  mode: packet\n  queue_packets: {QUEUE}\n  batch_size: {BATCH}\n"
                       f"  max_flows: {MAX_FLOWS}\n  idle_timeout: 3\n"
                       f"metrics:\n  listen: 127.0.0.1:{port}\n")
    d = Daemon(["-c", cfg], port, log_path=str(tmp_path / "daemon.log"))
    captured_key = f'tc_daemon_captured_packets_total{{interface="{a}"}}'
    kernel_key = f'tc_daemon_kernel_drops_total{{interface="{a}"}}'
    try:
        d.wait_ready()
        d.wait_for(lambda v: v.get(f'tc_daemon_capture_up{{interface="{a}"}}') == 1, what="capture up")
        rss_ready = rss_bytes(d.proc.pid)
        bound = rss_ready + QUEUE * ENTRY_COST + MAX_FLOWS * FLOW_COST + BATCH_COST + FIXED_ALLOWANCE
        rx0 = rx_packets(a)
        last = counters(d.metrics())

        files = [local_capture(c) for c in BURST_CAPTURES]
        burst = subprocess.Popen(["ip", "netns", "exec", ns, "tcpreplay", "-q", "-i", b, "--topspeed", "--loop=0",
                                  "--unique-ip", "--preload-pcap", f"--duration={BURST_SECONDS}", *files],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        rss_max, scrapes = rss_ready, 0
        try:
            while burst.poll() is None:
                time.sleep(1)
                assert d.proc.poll() is None, f"daemon died under load: {d.log()}"
                rss_max = max(rss_max, rss_bytes(d.proc.pid))
                vals = counters(d.metrics())  # raises (fails the test) if /metrics does not answer
                scrapes += 1
                went_down = {k: (last[k], v) for k, v in vals.items() if v < last.get(k, 0)}
                assert not went_down, f"counters went down: {went_down}"
                last = vals
        finally:
            if burst.poll() is None:
                burst.kill()
            out = burst.communicate()[0]
        sent = int(re.search(r"Actual: (\d+) packets", out).group(1))
        assert scrapes >= 3, f"only {scrapes} samples during the burst"
        assert rss_max <= bound, (f"RSS {rss_max / 2**20:.1f} MiB over the bound {bound / 2**20:.1f} MiB "
                                  f"(ready: {rss_ready / 2**20:.1f} MiB)")

        # the backlog drains, every flow ends (idle timeout), every frame is accounted for
        def settled(v):
            counted = total(v, "tc_daemon_packets_total") + total(v, "tc_daemon_skipped_packets_total")
            return v["tc_daemon_flow_table_entries"] == 0 and v[captured_key] == counted
        d.wait_for(settled, timeout=120, what="queue drained and every flow ended")
        # every frame the interface received is captured or a counted kernel drop; the last frames can
        # still sit in a ring block (handed over 2 ms after its first frame) and kernel drops are read
        # once a second, so look until the books balance (a lost frame keeps them apart: the assert)
        end = time.time() + 10
        while True:
            time.sleep(1.5)
            vals = d.metrics()
            rx = rx_packets(a) - rx0
            captured, kernel = vals[captured_key], vals[kernel_key]
            if rx == captured + kernel or time.time() > end:
                break
        rss_max = max(rss_max, rss_bytes(d.proc.pid))
        assert rss_max <= bound
        drops = by_label(vals, "tc_daemon_dropped_packets_total", "reason")
        scored = vals["tc_daemon_batch_size_sum"]
        assert rx <= sent
        # two sides: the kernel accounts for every frame the interface received (handed to the socket or
        # dropped), and the daemon read every frame the kernel handed over; on failure, say whether the
        # capture was reopened (a ring lost with its frames) and what the daemon logged
        handed = vals[f'tc_daemon_kernel_packets_total{{interface="{a}"}}']
        reopens = {k: v for k, v in vals.items() if "reopens" in k}
        held = vals[f'tc_daemon_ring_held_frames_total{{interface="{a}"}}']  # read before the kernel let go
        lost_blocks = vals[f'tc_daemon_ring_lost_blocks_total{{interface="{a}"}}']
        assert rx == handed, ("kernel side", rx, handed, reopens)
        # Linux 6.18 was seen to reuse a ring block before it was read, now and then, after the ring had
        # been full (docs/reliability.md): the daemon counts such blocks, and their frames, which the kernel
        # counted as handed over, are then the only frames missing (at most a block's worth each)
        gap = rx - captured - kernel
        assert gap == 0 or 0 < gap <= lost_blocks * FRAMES_PER_BLOCK, \
            ("daemon side", rx, captured, kernel, lost_blocks, held, reopens, d.log()[-2000:])
        assert captured == total(vals, "tc_daemon_packets_total") + total(vals, "tc_daemon_skipped_packets_total")
        assert drops["queue_full"] > 0 and kernel > 0, (drops, kernel)  # both kinds of overload, both counted
        assert drops["model_error"] == 0 and drops["shutdown"] == 0
        assert vals["tc_daemon_decision_latency_seconds_count"] == scored
        assert 0 < scored and scored + sum(drops.values()) <= captured
        assert sum(by_label(vals, "tc_daemon_flows_total", "class").values()) > MAX_FLOWS  # the table turned over
        print(f"burst: sent {sent}, interface rx {rx}, captured {captured:.0f}, kernel drops {kernel:.0f}, "
              f"queue drops {drops['queue_full']:.0f}, scored {scored:.0f}, frames read from held ring blocks {held:.0f}, ring blocks lost {lost_blocks:.0f}; RSS ready {rss_ready / 2**20:.1f} MiB, "
              f"max {rss_max / 2**20:.1f} MiB, bound {bound / 2**20:.1f} MiB")

        # calm again: a modest replay goes through untouched
        before = vals
        calm_rx0 = rx_packets(a)
        r = sh("ip", "netns", "exec", ns, "tcpreplay", "-q", "-i", b, f"--pps={CALM_RATE}",
               local_capture(CALM_CAPTURE))
        calm_sent = int(re.search(r"Actual: (\d+) packets", r.stdout).group(1))
        d.wait_for(lambda v: v[captured_key] >= before[captured_key] + calm_sent and settled(v), timeout=60,
                   what="the calm replay captured and counted")
        time.sleep(1.5)
        after = d.metrics()
        assert rx_packets(a) - calm_rx0 == calm_sent
        assert after[captured_key] - before[captured_key] == calm_sent
        assert after[kernel_key] == before[kernel_key]
        assert total(after, "tc_daemon_dropped_packets_total") == total(before, "tc_daemon_dropped_packets_total")
        assert total(after, "tc_daemon_packets_total") + total(after, "tc_daemon_skipped_packets_total") == \
            after[captured_key]
        assert rss_bytes(d.proc.pid) <= bound
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0, d.log()
    assert "Traceback" not in d.log()
