"""Acceptance: `tc-daemon run` on a veth end, tcpreplay into the other, /metrics == `classify`.

A network namespace holds one end of a veth pair; tcpreplay sends a shared-corpus
capture into it at a modest rate; the daemon captures on the other end with
the shipped default model. Once every flow has ended (a short idle timeout
in the daemon), its per-class packet totals must equal what `tc-daemon
classify --output flows` reports for the same capture, with zero kernel and
queue drops. Needs root, iproute2 and tcpreplay: under CI=true it must run.

Why the two idle timeouts differ: the live daemon ends flows a few seconds
after the whole replay could have lasted (so the test need not wait 120 s, and
no flow is split while replaying), while `classify` keeps the default on the
capture's own timestamps; the captures chosen have no flow pausing longer than
120 s, so both see the same flows.
"""
import json
import os
import time
from collections import Counter

import pytest

from daemon.capture.pcapfile import PcapReader
from tests.daemon_proc import (local_capture, Daemon, by_label, classify_flows, free_port, per_class, run_cli, total,
                               write_config)
from bench.netns import make_link, sh

pytestmark = pytest.mark.e2e
RATE = 500  # packets/s: modest, so any drop is a bug rather than overload


def start_daemon(tmp_path, a, idle_timeout=2, pipeline_extra=""):
    port = free_port()
    cfg = write_config(str(tmp_path / "config.yaml"),
                       f"capture:\n  interfaces: [{a}]\n  ignore_outgoing: true\n"
                       f"pipeline:\n  idle_timeout: {idle_timeout}\n{pipeline_extra}"
                       f"metrics:\n  listen: 127.0.0.1:{port}\n")
    d = Daemon(["-c", cfg], port)
    d.wait_ready()
    d.wait_for(lambda v: v.get(f'tc_daemon_capture_up{{interface="{a}"}}') == 1, what="capture up")
    return d


def replay(ns, b, path, rate=RATE):
    r = sh("ip", "netns", "exec", ns, "tcpreplay", "-q", "-i", b, f"--pps={rate}", path)
    assert "Actual:" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("capture", ["dropbox.pcap", "telegram.pcap"])
@pytest.mark.parametrize("block_frames", [None, 1])
def test_live_metrics_equal_classify(netns, tmp_path, capture, block_frames):
    """block_frames 1: every ring block (on x86) is decoded at once by numpy, as big blocks are under load."""
    ns, a, b = netns
    path = local_capture(capture)
    with PcapReader(path) as r:
        frames = sum(1 for _ in r)
    rows = classify_flows(path)
    expected = per_class(rows)

    d = start_daemon(tmp_path, a, idle_timeout=frames // RATE + 3,
                     pipeline_extra=f"  block_frames: {block_frames}\n" if block_frames else "")
    try:
        replay(ns, b, path)
        vals = d.wait_for(lambda v: v[f'tc_daemon_captured_packets_total{{interface="{a}"}}'] >= frames
                          and v["tc_daemon_flow_table_entries"] == 0
                          and total(v, "tc_daemon_packets_total") >= sum(expected.values()),
                          timeout=30, what="every frame captured and every flow decided")
        time.sleep(0.5)
        vals = d.metrics()
        assert vals[f'tc_daemon_captured_packets_total{{interface="{a}"}}'] == frames
        assert vals[f'tc_daemon_kernel_drops_total{{interface="{a}"}}'] == 0
        assert total(vals, "tc_daemon_dropped_packets_total") == 0
        got = {c: n for c, n in by_label(vals, "tc_daemon_packets_total", "class").items() if n}
        assert got == dict(expected)
        flows = {c: n for c, n in by_label(vals, "tc_daemon_flows_total", "class").items() if n}
        assert sum(flows.values()) == len(rows)
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0


def test_interface_disappears_and_returns(netns, tmp_path):
    ns, a, b = netns
    d = start_daemon(tmp_path, a)
    up = f'tc_daemon_capture_up{{interface="{a}"}}'
    try:
        sh("ip", "link", "del", a)  # takes its peer in the namespace with it
        d.wait_for(lambda v: v[up] == 0, what="capture_up 0")
        assert d.proc.poll() is None
        make_link(ns, a, b)
        vals = d.wait_for(lambda v: v[up] == 1, what="capture reopened")
        assert vals[f'tc_daemon_capture_reopens_total{{interface="{a}"}}'] == 1
        assert d.log().count(f"capture on {a} lost") == 1
        replay(ns, b, local_capture("dropbox.pcap"), rate=2000)
        d.wait_for(lambda v: v[f'tc_daemon_captured_packets_total{{interface="{a}"}}'] >= 848,
                   what="capture after reopening")
    finally:
        assert d.stop() == 0


def test_workers_share_an_interface_through_fanout(netns, tmp_path):
    """capture.workers: 2 processes in one PACKET_FANOUT group; their metrics add up to classify's."""
    ns, a, b = netns
    path = local_capture("telegram.pcap")
    r = run_cli("classify", path, "--output", "summary", "--format", "jsonl")
    expected = {row["class"]: row["packets"] for row in map(json.loads, r.stdout.splitlines())}
    port = free_port()
    while free_port() == port + 1:  # the worker takes the next port
        port = free_port()
    cfg = write_config(str(tmp_path / "config.yaml"),
                       f"capture:\n  interfaces: [{a}]\n  ignore_outgoing: true\n  fanout_group: "
                       f"{1000 + os.getpid() % 1000}\n  workers: 2\n"
                       f"pipeline:\n  idle_timeout: 6\nmetrics:\n  listen: 127.0.0.1:{port}\n")
    d = Daemon(["-c", cfg], port)
    try:
        d.wait_ready()
        from tests.daemon_proc import scrape
        url1 = f"http://127.0.0.1:{port + 1}/metrics"
        end = time.time() + 30
        while time.time() < end:
            try:
                scrape(url1)
                break
            except OSError:
                time.sleep(0.2)
        replay(ns, b, path, rate=1000)
        time.sleep(1)

        def both():
            return [d.metrics(), scrape(url1)]
        end = time.time() + 30
        while time.time() < end:
            v = both()
            if all(x["tc_daemon_flow_table_entries"] == 0 for x in v) and \
                    sum(x[f'tc_daemon_captured_packets_total{{interface="{a}"}}'] for x in v) >= 1566:
                break
            time.sleep(0.3)
        v = both()
        assert all(x[f'tc_daemon_captured_packets_total{{interface="{a}"}}'] > 0 for x in v)  # both got work
        got = Counter()
        for x in v:
            got.update(by_label(x, "tc_daemon_packets_total", "class"))
        assert {c: n for c, n in got.items() if n} == expected
    finally:
        assert d.stop() == 0
    assert "worker 1" in d.log()
