"""Hostile input: random frames for every link type, mangled IP headers, random capture files.

No exception may escape the reader, the parser or the feature function, and
every frame is either decoded or counted under a known skip reason.
"""
import os
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon import packet as P
from daemon.capture.pcapfile import CaptureError, PcapReader
from daemon.features import payload_bytes
from tests.packets import ether, ipv4, ipv6, pcap_file, pcapng_file, tcp, udp

LINKTYPES = [P.LINKTYPE_NULL, P.LINKTYPE_ETHERNET, P.LINKTYPE_PPP, P.LINKTYPE_RAW, P.LINKTYPE_C_HDLC,
             P.LINKTYPE_LOOP, P.LINKTYPE_LINUX_SLL, P.LINKTYPE_PPI, P.LINKTYPE_IPV4, P.LINKTYPE_IPV6,
             P.LINKTYPE_LINUX_SLL2, P.LINKTYPE_PPP_HDLC, 12, 14, 147]
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "400")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def decode_checked(lt, frame):
    d = P.decode(lt, frame)
    if isinstance(d, int):
        assert -len(P.SKIP_REASONS) <= d <= -1
        return None
    version, proto, src, dst, sport, dport, ip_off, l4_off, l4_end, data_off = d
    assert 0 <= ip_off <= l4_off <= l4_end <= len(frame)
    assert l4_off <= data_off <= l4_end
    assert version in (4, 6) and 0 <= proto <= 255
    # the feature function accepts whatever decode accepted
    x = payload_bytes([frame[:l4_end]], [l4_off])
    assert x.shape == (1, 1480) and not x[0, :20].any()
    return d


@FUZZ
@given(st.sampled_from(LINKTYPES), st.binary(max_size=200))
def test_random_frames_every_link_type(lt, frame):
    decode_checked(lt, frame)


@FUZZ
@given(st.binary(min_size=20, max_size=80), st.integers(0, 65535), st.integers(0, 15),
       st.integers(0, 0xFFFF), st.sampled_from([0x0800, 0x86DD, 0x8100, 0x88A8, 0x8864, 0x8847]))
def test_mangled_ipv4_headers(body, total, ihl, frag, etype):
    pkt = bytearray(ipv4(tcp(data=body)))
    pkt[0] = 0x40 | ihl
    pkt[2:4] = struct.pack("!H", total)
    pkt[6:8] = struct.pack("!H", frag)
    decode_checked(P.LINKTYPE_ETHERNET, ether(bytes(pkt), etype=etype))


@FUZZ
@given(st.lists(st.tuples(st.sampled_from([0, 43, 60, 44, 51, 135, 6, 17, 59]), st.integers(0, 255)),
                max_size=14), st.integers(0, 70000), st.binary(max_size=64))
def test_ipv6_extension_chains(chain, plen, tail):
    """Chains that loop, run off the end, or claim absurd lengths."""
    ext = b""
    nexts = [c for c, _ in chain[1:]] + [17]
    for (_, length), nxt in zip(chain, nexts):
        ext += bytes([nxt, length]) + b"\x00" * 6
    first = chain[0][0] if chain else 17
    pkt = bytearray(ipv6(udp(data=tail), nxt=first, ext=ext))
    pkt[4:6] = struct.pack("!H", plen & 0xFFFF)
    decode_checked(P.LINKTYPE_RAW, bytes(pkt))


@FUZZ
@given(st.binary(max_size=600))
def test_random_pcap_bodies(tmp_path_factory, blob):
    """A valid pcap header followed by garbage; and garbage after a pcapng section header."""
    d = tmp_path_factory.mktemp("f")
    for i, head in enumerate((pcap_file([]), pcapng_file([1], []))):
        path = d / f"x{i}"
        path.write_bytes(head + blob)
        with PcapReader(str(path)) as r:
            for lt, _, frame in r:
                decode_checked(lt, frame)


@FUZZ
@given(st.lists(st.binary(max_size=120), max_size=6), st.sampled_from(LINKTYPES),
       st.integers(0, 0xFFFFFFFF))
def test_record_length_fields(frames, lt, bogus):
    """Records whose incl_len is lied about (zero, giant) end the file with a count, not a hang."""
    blob = bytearray(pcap_file(frames, linktype=lt))
    if frames:
        blob[24 + 8:24 + 12] = struct.pack("<I", bogus)
    import tempfile
    with tempfile.NamedTemporaryFile() as f:
        f.write(bytes(blob))
        f.flush()
        with PcapReader(f.name) as r:
            n = sum(1 for rec in r if decode_checked(rec[0], rec[2]) or True)
        assert n <= (len(blob) - 24) // 16  # every record costs at least its 16-byte header


@FUZZ
@given(st.binary(max_size=64))
def test_any_file_opens_or_says_why(blob):
    import tempfile
    with tempfile.NamedTemporaryFile() as f:
        f.write(blob)
        f.flush()
        try:
            with PcapReader(f.name) as r:
                list(r)
        except CaptureError as e:
            assert "not a pcap" in str(e)


def mangled_ipv4(body, vihl, total, frag):
    pkt = bytearray(ipv4(tcp(data=body)))
    pkt[0] = vihl
    pkt[2:4] = struct.pack("!H", total)
    pkt[6:8] = struct.pack("!H", frag)
    return bytes(pkt)


IP_PACKETS = st.one_of(
    st.binary(max_size=120),
    st.builds(mangled_ipv4, st.binary(max_size=40), st.sampled_from([0x45, 0x46, 0x65, 0x60]),
              st.integers(0, 200), st.integers(0, 0xFFFF)),
    st.builds(lambda b, plen, nxt: ipv6(udp(data=b), nxt=nxt, plen=plen),
              st.binary(max_size=40), st.integers(0, 100), st.integers(0, 255)))


@FUZZ
@given(st.lists(st.tuples(IP_PACKETS, st.sampled_from([0x0800, 0x86DD, 0x8100])), min_size=1, max_size=30),
       st.booleans())
def test_block_decoder_on_mangled_frames(packets, raw):
    """decode_block (a ring block at once, numpy) agrees with decode() on random and mangled frames,
    behind Ethernet (any EtherType) or on a raw IP link."""
    from tests.test_packet import check_block
    if raw:
        check_block(P.LINKTYPE_RAW, [ip for ip, _ in packets])
    else:
        check_block(P.LINKTYPE_ETHERNET, [ether(ip, etype=e) for ip, e in packets])
