"""Acceptance (issue 8): every capture of the shared nDPI corpus through `classify` and through the live path.

Live: `tc-daemon run` (the shipped default model, flow mode) captures on one
end of a veth pair; tcpreplay sends every frame of every capture in the corpus
(badpackets, the ossfuzz_* seeds, ip_fragmented_garbage and the other hostile
ones included) into the other end in one invocation, at RATE packets/s.

tcpreplay sends frames as they are, so every capture is first rewritten as a
plain Ethernet pcap, frame by frame, from what `daemon.capture.pcapfile` reads
(the daemon's own reader: the frames `classify` sees): Ethernet frames are
copied unchanged; for the other link types (raw IP, IPv4, Linux SLL, NULL,
Cisco HDLC, PPP, PPI) the link header is replaced by a synthetic Ethernet
header whose EtherType is the one that link header names (SLL's protocol, the
HDLC EtherType, NULL's address family, PPP's protocol, the IP version of a raw
packet); PPI's inner Ethernet frame is sent as it is. `tcprewrite --dlt=enet`
(tcpreplay 4.4.3) is not used: it has no plugin for PPP, IPv4 (228) or PPI,
stops at the first frame of NULL captures ("Expected IPv4 packet"), and what
it wrote for raw IP, SLL and Cisco HDLC captures had a wrong EtherType or
length. pcapng files are rewritten the same way, so tcpreplay reads only pcaps
this test wrote and the frames sent are exactly those the reader yields.

Both veth ends get MTU 65535 (the corpus holds frames of up to 37,506 bytes),
so the frames the kernel refuses to send are those shorter than an Ethernet
header (one: gnutella.pcap's 4-byte first frame) and any longer than the MTU
(none); tcpreplay's "Failed packets" must equal that number.

Then: the daemon is alive and answering /metrics; its log has no traceback and
no ERROR/CRITICAL line; captured = what the interface received - kernel drops,
with zero kernel and zero queue drops; once every flow has ended,
captured = sum(packets_total) + sum(skipped_packets_total), and the skip
counters by reason equal what `daemon.packet.decode` says of the frames as
the kernel hands them to a packet socket (an outer 802.1Q/802.1ad tag removed).
The figures are printed (pytest -s).

Offline: `tc-daemon classify` on the corpus folder in flow and packet mode
exits 0 with no traceback, one known warning line (fuzz-2021-10-13.pcap's
first record has a bad length), and counts every IP packet the reader yields.
"""
import json
import os
import re
import struct
import time
from collections import Counter

import pytest

from daemon.capture.pcapfile import PcapReader
from daemon.packet import SKIP_REASONS, decode
from tests.daemon_proc import (CORPUS, Daemon, by_label, error_lines, free_port, need_corpus, run_cli, total,
                               write_config)
from bench.netns import rx_packets, sh

pytestmark = pytest.mark.e2e

RATE = 20_000    # packets/s: 87k frames in ~5 s, lossless for the daemon in flow mode
MTU = 65535      # veth's largest
ETH_HLEN = 14
SRC_MAC, DST_MAC = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
KNOWN_WARNING = "fuzz-2021-10-13.pcap: bad_record_length (1); classified the frames before it"
VLAN_TPIDS = (0x8100, 0x88A8)  # what the kernel's receive path takes off (skb_vlan_untag) before a tap sees it


def ethernet(linktype: int, frame: bytes):
    """The frame as Ethernet (bytes), or why it has no Ethernet form (str)."""
    n = len(frame)
    if linktype == 1:
        return frame
    payload = None
    if linktype in (101, 228, 229, 12, 14):  # raw IP: the EtherType from the version nibble
        etype = {4: 0x0800, 6: 0x86DD}.get(frame[0] >> 4) if n else None
        if etype is None:
            return f"raw IP of version {frame[0] >> 4 if n else '(empty)'}"
        payload = frame
    elif linktype == 113:  # Linux SLL: protocol (an EtherType) at 14
        if n < 16:
            return "SLL header cut short"
        etype, payload = struct.unpack_from("!H", frame, 14)[0], frame[16:]
    elif linktype == 276:  # Linux SLL2: protocol at 0
        if n < 20:
            return "SLL2 header cut short"
        etype, payload = struct.unpack_from("!H", frame, 0)[0], frame[20:]
    elif linktype in (0, 108):  # NULL (host byte order) / LOOP (network order): an address family
        if n < 4:
            return "NULL header cut short"
        fam = int.from_bytes(frame[:4], "little")
        if fam > 0xFFFF:
            fam = int.from_bytes(frame[:4], "big")
        etype = 0x0800 if fam == 2 else 0x86DD if fam in (10, 23, 24, 28, 30) else None
        if etype is None:
            return f"NULL address family {fam}"
        payload = frame[4:]
    elif linktype == 104 or (linktype == 9 and n >= 2 and frame[0] in (0x0F, 0x8F) and frame[1] == 0):
        # Cisco HDLC (also found under the PPP link type): address, control, EtherType
        if n < 4:
            return "Cisco HDLC header cut short"
        etype, payload = struct.unpack_from("!H", frame, 2)[0], frame[4:]
    elif linktype in (9, 50):  # PPP: [ff 03] protocol
        off = 2 if n >= 2 and frame[0] == 0xFF and frame[1] == 0x03 else 0
        if off >= n or (not frame[off] & 1 and off + 2 > n):
            return "PPP header cut short"
        proto, off = (frame[off], off + 1) if frame[off] & 1 else (struct.unpack_from("!H", frame, off)[0], off + 2)
        etype = {0x0021: 0x0800, 0x0057: 0x86DD}.get(proto)
        if etype is None:
            return f"PPP protocol 0x{proto:04x}"
        payload = frame[off:]
    elif linktype == 192:  # PPI: a header, then a frame of the link type it names
        if n < 8:
            return "PPI header cut short"
        hlen, dlt = int.from_bytes(frame[2:4], "little"), int.from_bytes(frame[4:8], "little")
        if dlt == 192 or hlen < 8 or hlen > n:
            return "PPI header invalid"
        return ethernet(dlt, frame[hlen:])
    else:
        return f"link type {linktype}"
    return DST_MAC + SRC_MAC + struct.pack("!H", etype) + payload


def as_received(frame: bytes) -> bytes:
    """The frame as a packet socket on the receiving veth reads it: one outer VLAN tag taken off."""
    if len(frame) >= ETH_HLEN + 4 and struct.unpack_from("!H", frame, 12)[0] in VLAN_TPIDS:
        return frame[:12] + frame[16:]
    return frame


def write_pcap(path: str, frames):
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for ts, frame in frames:
            sec = int(ts)
            f.write(struct.pack("<IIII", sec, int((ts - sec) * 1e6) % 1000000, len(frame), len(frame)))
            f.write(frame)


def skip_reason(frame: bytes) -> str:
    d = decode(1, frame)
    return SKIP_REASONS[-d - 1] if isinstance(d, int) else "ip"


def ethernet_corpus(dest: str) -> dict:
    """Every capture of the corpus rewritten as an Ethernet pcap in dest; what can and cannot be sent."""
    out = dict(files=[], captures=0, frames=0, no_ethernet=Counter(), too_short=0, too_long=0,
               read_errors={}, expected=Counter())
    for name in sorted(os.listdir(CORPUS)):
        frames = []
        with PcapReader(os.path.join(CORPUS, name)) as r:
            for lt, ts, frame in r:
                out["frames"] += 1
                e = ethernet(lt, bytes(frame))
                if isinstance(e, str):
                    out["no_ethernet"][f"{name}: {e}"] += 1
                    continue
                frames.append((ts, e))
                if len(e) < ETH_HLEN:  # a packet socket wants a whole link header (EINVAL)
                    out["too_short"] += 1
                elif len(e) - ETH_HLEN - (4 if struct.unpack_from("!H", e, 12)[0] in VLAN_TPIDS else 0) > MTU:
                    out["too_long"] += 1  # EMSGSIZE
                else:
                    out["expected"][skip_reason(as_received(e))] += 1
            if r.errors:
                out["read_errors"][name] = dict(r.errors)
        out["captures"] += 1
        if frames:
            path = os.path.join(dest, f"{len(out['files']):03d}-{name}.pcap")
            write_pcap(path, frames)
            out["files"].append(path)
    return out


def test_every_corpus_capture_through_the_live_path(netns, tmp_path):
    need_corpus()
    ns, a, b = netns
    sh("ip", "link", "set", a, "mtu", str(MTU))
    sh("ip", "netns", "exec", ns, "ip", "link", "set", b, "mtu", str(MTU))
    conv = tmp_path / "ethernet"
    conv.mkdir()
    corpus = ethernet_corpus(str(conv))
    sendable = sum(corpus["expected"].values())
    assert corpus["captures"] >= 400 and sendable > 80_000, corpus

    port = free_port()
    cfg = write_config(str(tmp_path / "config.yaml"),
                       f"capture:\n  interfaces: [{a}]\n  ignore_outgoing: true\n"
                       f"pipeline:\n  mode: flow\n  idle_timeout: 2\nmetrics:\n  listen: 127.0.0.1:{port}\n")
    d = Daemon(["-c", cfg], port, env={"JOURNAL_STREAM": ""}, log_path=str(tmp_path / "daemon.log"))
    captured = f'tc_daemon_captured_packets_total{{interface="{a}"}}'
    kernel = f'tc_daemon_kernel_drops_total{{interface="{a}"}}'
    try:
        d.wait_ready()
        d.wait_for(lambda v: v.get(f'tc_daemon_capture_up{{interface="{a}"}}') == 1, what="capture up")
        before = d.metrics()
        rx0 = rx_packets(a)
        t0 = time.time()
        r = sh("ip", "netns", "exec", ns, "tcpreplay", "-q", "-i", b, f"--pps={RATE}", "--preload-pcap",
               *corpus["files"], check=False)
        replay_s = time.time() - t0
        out = r.stdout + r.stderr
        m = re.search(r"Actual: (\d+) packets", out)
        assert m, out
        sent = int(m.group(1))
        m = re.search(r"Failed packets:\s+(\d+)", out)
        failed = int(m.group(1)) if m else 0

        vals = d.wait_for(lambda v: v[captured] + v[kernel] >= rx_packets(a) - rx0
                          and v["tc_daemon_flow_table_entries"] == 0
                          and total(v, "tc_daemon_packets_total") + total(v, "tc_daemon_skipped_packets_total")
                          >= v[captured],
                          timeout=60, what="every frame captured and every flow ended")
        time.sleep(0.5)
        vals = d.metrics()
        rx = rx_packets(a) - rx0
        assert d.proc.poll() is None, "daemon exited"
    finally:
        code = d.stop()
    log = d.log()
    skipped = {k: int(v) for k, v in by_label(vals, "tc_daemon_skipped_packets_total", "reason").items() if v}
    dropped = {k: v for k, v in by_label(vals, "tc_daemon_dropped_packets_total", "reason").items() if v}
    classified = int(total(vals, "tc_daemon_packets_total"))
    print(f"\n  captures {corpus['captures']} ({len(corpus['files'])} with frames), frames read {corpus['frames']}, "
          f"reader errors {corpus['read_errors']}")
    print(f"  no Ethernet form: {dict(corpus['no_ethernet']) or 0}; shorter than an Ethernet header: "
          f"{corpus['too_short']}; longer than MTU {MTU}: {corpus['too_long']}")
    print(f"  tcpreplay at {RATE}/s in {replay_s:.1f} s: sent {sent}, failed {failed}")
    print(f"  interface received {rx}, captured {vals[captured]:.0f}, kernel drops {vals[kernel]:.0f}, "
          f"queue drops {dropped or 0}")
    print(f"  classified {classified} IP packets in {int(total(vals, 'tc_daemon_flows_total'))} flows; "
          f"skipped {skipped}")
    print("  daemon log:", *error_lines(log), sep="\n    ")

    # what could not be sent is exactly what was predicted, and everything else went
    assert not corpus["no_ethernet"]
    assert failed == corpus["too_short"] + corpus["too_long"], out
    assert sent == sendable, out
    # no traceback, no error line, a clean exit
    assert code == 0, log
    assert "Traceback" not in log, log
    bad = [line for line in error_lines(log) if re.search(r" tc-daemon (ERROR|CRITICAL):", line)]
    assert not bad, log
    # every frame the interface received was read, none dropped
    assert rx == sent
    assert vals[captured] - before[captured] == rx - vals[kernel]
    assert vals[kernel] == 0
    assert not dropped
    # ... and counted: under a class, or skipped by the reason decode() gives offline
    assert classified + sum(skipped.values()) == vals[captured]
    assert classified == corpus["expected"]["ip"]
    assert skipped == {k: n for k, n in corpus["expected"].items() if k != "ip"}


@pytest.mark.parametrize("mode", ["flow", "packet"])
def test_classify_whole_corpus(mode):
    need_corpus()
    expected = 0
    for name in os.listdir(CORPUS):
        with PcapReader(os.path.join(CORPUS, name)) as r:
            expected += sum(1 for lt, _, frame in r if not isinstance(decode(lt, frame), int))
    r = run_cli("classify", CORPUS, "--mode", mode, "--output", "summary", "--format", "jsonl", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert [line for line in error_lines(r.stderr)] == [f"tc-daemon: warning: {CORPUS}/{KNOWN_WARNING}"]
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert sum(row["packets"] for row in rows) == expected
