"""Link layers and IP parsing on hand-made packets: every link type, VLAN/QinQ,
IPv6 extension headers, truncation and fragments."""
import struct

import pytest

from daemon import packet as P
from tests.packets import (DST4, SRC4, SRC6, ether, ext_header, frag_header, ipv4, ipv6, tcp, udp)

DATA = b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"
IP4 = ipv4(tcp(data=DATA))
IP6 = ipv6(udp(data=DATA), nxt=17)


def check_tcp4(d, frame):
    assert not isinstance(d, int), P.SKIP_REASONS[-d - 1]
    version, proto, src, dst, sport, dport, ip_off, l4_off, l4_end, data_off = d
    assert (version, proto, src, dst, sport, dport) == (4, 6, SRC4, DST4, 40000, 443)
    assert bytes(frame[data_off:l4_end]) == DATA
    assert l4_off == ip_off + 20


@pytest.mark.parametrize("linktype,frame", [
    (P.LINKTYPE_ETHERNET, ether(IP4)),
    (P.LINKTYPE_ETHERNET, ether(IP4, vlans=[(0x8100, 10)])),
    (P.LINKTYPE_ETHERNET, ether(IP4, vlans=[(0x88A8, 100), (0x8100, 10)])),  # QinQ
    (P.LINKTYPE_ETHERNET, ether(struct.pack("!BBHHH", 0x11, 0, 1, len(IP4) + 2, 0x0021) + IP4, etype=0x8864)),
    (P.LINKTYPE_ETHERNET, ether(struct.pack("!I", (16 << 12) | 0x100 | 64) + IP4, etype=0x8847)),  # MPLS
    (P.LINKTYPE_RAW, IP4),
    (P.LINKTYPE_IPV4, IP4),
    (P.LINKTYPE_LINUX_SLL, struct.pack("!HHH8sH", 0, 1, 6, b"\x02" * 8, 0x0800) + IP4),
    (P.LINKTYPE_LINUX_SLL2, struct.pack("!HHIHBB8s", 0x0800, 0, 2, 1, 0, 6, b"\x02" * 8) + IP4),
    (P.LINKTYPE_NULL, struct.pack("<I", 2) + IP4),
    (P.LINKTYPE_NULL, struct.pack(">I", 2) + IP4),  # written on a big-endian host
    (P.LINKTYPE_LOOP, struct.pack(">I", 2) + IP4),
    (P.LINKTYPE_PPP, b"\xff\x03\x00\x21" + IP4),
    (P.LINKTYPE_PPP, b"\x00\x21" + IP4),
    (P.LINKTYPE_PPP, b"\x21" + IP4),  # protocol-field compression
    (P.LINKTYPE_C_HDLC, b"\x0f\x00\x08\x00" + IP4),
    # an EtherType after Cisco HDLC is followed as on Ethernet (BGP_redist.pcap: MPLS), also under the PPP type
    (P.LINKTYPE_C_HDLC, b"\x0f\x00\x88\x47" + struct.pack("!I", (18 << 12) | 0x100 | 254) + IP4),
    (P.LINKTYPE_PPP, b"\x0f\x00\x81\x00" + struct.pack("!HH", 10, 0x0800) + IP4),
    (P.LINKTYPE_PPI, struct.pack("<BBHI", 0, 0, 8, 1) + ether(IP4)),
])
def test_link_types_reach_ipv4(linktype, frame):
    check_tcp4(P.decode(linktype, frame), frame)


@pytest.mark.parametrize("linktype,frame", [
    (P.LINKTYPE_ETHERNET, ether(IP6, etype=0x86DD)),
    (P.LINKTYPE_RAW, IP6),
    (P.LINKTYPE_IPV6, IP6),
    (P.LINKTYPE_NULL, struct.pack("<I", 30) + IP6),  # AF_INET6 on macOS
    (P.LINKTYPE_NULL, struct.pack("<I", 24) + IP6),  # ... on NetBSD/OpenBSD
    (P.LINKTYPE_C_HDLC, b"\x0f\x00\x86\xdd" + IP6),
    (P.LINKTYPE_PPP, b"\xff\x03\x00\x57" + IP6),
])
def test_link_types_reach_ipv6(linktype, frame):
    d = P.decode(linktype, frame)
    assert not isinstance(d, int)
    assert d[:6] == (6, 17, SRC6, d[3], 5353, 53)
    assert bytes(frame[d[9]:d[8]]) == DATA


def test_ipv6_extension_chain():
    ext = ext_header(43, 0) + ext_header(60, 1) + ext_header(6, 0)  # hop-by-hop -> routing -> dest opts -> TCP
    pkt = ipv6(tcp(data=DATA), nxt=0, ext=ext)
    d = P.decode(P.LINKTYPE_RAW, pkt)
    assert d[1] == 6 and d[4:6] == (40000, 443)
    assert d[7] == 40 + len(ext)
    assert bytes(pkt[d[9]:d[8]]) == DATA


def test_ipv6_first_fragment_is_used_and_later_ones_skipped():
    first = ipv6(udp(data=DATA), nxt=44, ext=frag_header(17, 0, more=1))
    later = ipv6(DATA, nxt=44, ext=frag_header(17, 100))
    assert P.decode(P.LINKTYPE_RAW, first)[1] == 17
    assert P.decode(P.LINKTYPE_RAW, later) == -P.FRAGMENT - 1


def test_ipv6_chain_running_off_the_end_is_truncated():
    pkt = ipv6(b"", nxt=0, ext=bytes([60, 10]) + b"\0" * 6, plen=8)  # claims 88 bytes, has 8
    assert P.decode(P.LINKTYPE_RAW, pkt) == -P.TRUNCATED - 1


def test_ipv6_endless_chain_is_bounded():
    ext = b"".join(ext_header(60, 0) for _ in range(P.MAX_IPV6_EXT + 2))
    pkt = ipv6(b"", nxt=60, ext=ext)
    assert P.decode(P.LINKTYPE_RAW, pkt) == -P.BAD_HEADER - 1


def test_ipv4_non_first_fragment_skipped_first_kept():
    assert P.decode(P.LINKTYPE_RAW, ipv4(tcp(data=DATA), frag=0x2000))[1] == 6  # MF set, offset 0
    assert P.decode(P.LINKTYPE_RAW, ipv4(DATA, frag=185)) == -P.FRAGMENT - 1


@pytest.mark.parametrize("frame,reason", [
    (ipv4(tcp(), ihl=4), P.BAD_HEADER),
    (ipv4(tcp(), ihl=15), P.TRUNCATED),         # options run past the captured bytes
    (ipv4(tcp(), total=10), P.BAD_LENGTH),
    (IP4[:12], P.TRUNCATED),
    (IP6[:30], P.TRUNCATED),
    (b"\x50" + IP4[1:], P.NOT_IP),               # IP version 5 on a raw-IP link
    (b"", P.TRUNCATED),
])
def test_bad_ip_is_counted_not_raised(frame, reason):
    assert P.decode(P.LINKTYPE_RAW, frame) == -reason - 1


@pytest.mark.parametrize("linktype,frame,reason", [
    (P.LINKTYPE_ETHERNET, ether(b"\0" * 28, etype=0x0806), P.NOT_IP),  # ARP
    (P.LINKTYPE_ETHERNET, b"\x00" * 10, P.TRUNCATED),
    (P.LINKTYPE_ETHERNET, ether(b"", vlans=[(0x8100, 1)])[:15], P.TRUNCATED),
    (P.LINKTYPE_LINUX_SLL, b"\x00" * 8, P.TRUNCATED),
    (P.LINKTYPE_NULL, struct.pack("<I", 7) + IP4, P.NOT_IP),
    (P.LINKTYPE_PPP, b"\xff\x03\xc0\x21" + b"\0" * 8, P.NOT_IP),  # LCP
    (P.LINKTYPE_PPI, struct.pack("<BBHI", 0, 0, 200, 1), P.BAD_HEADER),
    (147, IP4, P.UNSUPPORTED_LINKTYPE),
])
def test_link_layer_skips(linktype, frame, reason):
    assert P.decode(linktype, frame) == -reason - 1


def test_ipv4_zero_total_length_uses_captured_bytes():
    """TSO-offloaded captures write total length 0; the bytes are still there."""
    pkt = bytearray(IP4)
    pkt[2:4] = b"\0\0"
    d = P.decode(P.LINKTYPE_RAW, bytes(pkt))
    assert bytes(pkt[d[9]:d[8]]) == DATA


def test_bare_ack_has_no_data():
    d = P.decode(P.LINKTYPE_RAW, ipv4(tcp(hlen=32)))
    assert d[9] == d[8]  # data_off == l4_end


def test_icmp_has_no_ports():
    d = P.decode(P.LINKTYPE_RAW, ipv4(b"\x08\x00" + b"\0" * 30, proto=1))
    assert d[1] == 1 and d[4:6] == (0, 0)


def _captures():
    import glob
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return sorted(glob.glob(os.path.join(root, "tests", "data", "*.pcap")) +
                  glob.glob(os.path.join(root, "tests", "data", "*.pcapng")) +
                  glob.glob(os.path.join(root, "tests", "data", "*.cap")) +
                  glob.glob(os.path.join(root, "daemon", "data", "*.pcap")))


def test_the_ethernet_ipv4_fast_path_agrees_with_the_general_decoder():
    """decode() takes a one-unpack path for Ethernet + option-less IPv4; on every frame of the
    bundled real captures (fuzzed and malformed ones included) and on hand-made edge cases it
    must return exactly what the general decoder returns."""
    from daemon.capture.pcapfile import PcapReader
    fast = 0
    for path in _captures():
        with PcapReader(path) as r:
            for lt, _ts, frame in r:
                d = P.decode(lt, frame)
                assert d == P.decode_any(lt, frame), (path, bytes(frame[:64]).hex())
                fast += lt == P.LINKTYPE_ETHERNET and not isinstance(d, int) and d[0] == 4 and d[7] == 34
    assert fast > 1000  # the fast path was really taken
    edge = [ipv4(tcp(data=DATA)), ipv4(udp(data=b"")), ipv4(tcp(data=DATA))[:30]]
    for ip in edge:
        for frame in (ether(ip), ether(ip)[:33], ether(ip)[:34], ether(ip)[:40]):
            assert P.decode(P.LINKTYPE_ETHERNET, frame) == P.decode_any(P.LINKTYPE_ETHERNET, frame)
    bad = bytearray(ether(IP4))
    bad[14 + 6] = 0x20  # a non-first fragment
    bad2 = bytearray(ether(IP4))
    bad2[14 + 2:14 + 4] = b"\x00\x00"  # total length 0 (TSO capture): the general path decides
    for frame in (bytes(bad), bytes(bad2)):
        assert P.decode(P.LINKTYPE_ETHERNET, frame) == P.decode_any(P.LINKTYPE_ETHERNET, frame)


def block_of(frames):
    """Frames laid end to end in one buffer, as decode_block takes them."""
    import numpy as np
    buf = np.frombuffer(b"".join(frames), np.uint8)
    lens = np.array([len(f) for f in frames])
    return buf, np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.intp), lens


def check_block(lt, frames):
    """decode_block() agrees with decode() on every frame it takes and hands back all the others.
    Returns how many it took."""
    groups, rest = P.decode_block(lt, *block_of(frames))
    taken = set()
    for g in groups:
        for j, i in enumerate(g.idx.tolist()):
            got = (g.version, int(g.proto[j]), g.src[j].tobytes(), g.dst[j].tobytes(), int(g.sport[j]),
                   int(g.dport[j]), g.ip_off, g.l4_off, int(g.l4_end[j]), int(g.data_off[j]))
            assert got == P.decode(lt, frames[i]), (lt, frames[i][:80].hex())
            taken.add(i)
    assert sorted(taken | set(rest.tolist())) == list(range(len(frames))) and not taken & set(rest.tolist())
    return len(taken)


def test_block_decoder_agrees_with_decode():
    """decode_block (numpy, a ring block at once) on every frame of the bundled real captures, fuzzed
    and malformed ones included, and on hand-made edge cases, raw IP links too."""
    from daemon.capture.pcapfile import PcapReader
    taken = total = 0
    for path in _captures():
        by_lt = {}
        with PcapReader(path) as r:
            for lt, _ts, frame in r:
                by_lt.setdefault(lt, []).append(bytes(frame))
        for lt, frames in by_lt.items():
            taken += check_block(lt, frames)
            total += len(frames)
    assert taken > 0.7 * total  # the common shapes really are decoded by numpy
    edge = [ipv4(tcp(data=DATA)), ipv4(udp(data=b""), proto=17), ipv4(tcp(data=DATA))[:30],
            ipv4(tcp(data=DATA), total=0), ipv6(tcp(data=DATA)), ipv6(udp(data=DATA), nxt=17)[:45],
            ipv6(tcp(data=DATA), plen=0), ipv6(ext_header(6) + tcp(data=DATA), nxt=0)]
    frames = [f for ip in edge for e in (0x0800, 0x86DD)
              for f in (ether(ip, e), ether(ip, e)[:33], ether(ip, e)[:34], ether(ip, e)[:40],
                        ether(ip, e)[:54], ether(ip, e)[:60], ether(ip, e)[:67])]
    assert check_block(P.LINKTYPE_ETHERNET, frames) > 10
    assert check_block(P.LINKTYPE_RAW, edge + [ip[:20] for ip in edge] + [b"", b"\x45"]) >= 4
    assert check_block(P.LINKTYPE_LINUX_SLL, [b"\x00" * 16 + ip for ip in edge]) == 0  # left to decode()
