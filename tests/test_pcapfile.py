"""Capture reading: formats by magic number, byte orders, resolutions, broken files."""
import os

import pytest

from daemon import packet as P
from daemon.capture.pcapfile import CaptureError, PcapReader
from tests.packets import ether, ipv4, pcap_file, pcapng_file, tcp

DATA = os.path.join(os.path.dirname(__file__), "data")
FRAME = ether(ipv4(tcp(data=b"hello world, this is payload")))


def write(tmp_path, name, blob):
    p = tmp_path / name
    p.write_bytes(blob)
    return str(p)


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_pcap_byte_orders_and_resolutions(tmp_path, endian, nano):
    path = write(tmp_path, "x.bin", pcap_file([FRAME, FRAME], endian=endian, nano=nano))
    with PcapReader(path) as r:
        recs = [(lt, ts, bytes(f)) for lt, ts, f in r]
    assert [lt for lt, _, _ in recs] == [1, 1]
    assert recs[0][2] == FRAME
    assert recs[0][1] == pytest.approx(1000 + (500e-9 if nano else 500e-6))
    assert not r.errors


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcapng_several_interfaces_and_link_types(tmp_path, endian):
    raw = ipv4(tcp(data=b"raw ip payload here"))
    path = write(tmp_path, "x.pcap", pcapng_file([1, 101], [(0, FRAME), (1, raw), (0, FRAME)], endian))
    with PcapReader(path) as r:
        assert r.format == "pcapng"  # by magic, not by the .pcap name
        recs = [(lt, bytes(f)) for lt, _, f in r]
    assert recs == [(1, FRAME), (101, raw), (1, FRAME)]
    assert all(not isinstance(P.decode(lt, f), int) for lt, f in recs)


def test_truncated_record_is_counted(tmp_path):
    blob = pcap_file([FRAME, FRAME])[:-10]
    with PcapReader(write(tmp_path, "t.pcap", blob)) as r:
        assert len(list(r)) == 1
        assert r.errors["truncated_record"] == 1


def test_giant_record_length_ends_file_without_hang(tmp_path):
    blob = bytearray(pcap_file([FRAME]))
    blob[24 + 8:24 + 12] = (0x7FFFFFFF).to_bytes(4, "little")
    with PcapReader(write(tmp_path, "g.pcap", bytes(blob))) as r:
        assert list(r) == []
        assert r.errors["bad_record_length"] == 1


def test_zero_length_records(tmp_path):
    with PcapReader(write(tmp_path, "z.pcap", pcap_file([b"", FRAME, b""]))) as r:
        frames = [bytes(f) for _, _, f in r]
    assert frames == [b"", FRAME, b""]
    assert P.decode(1, b"") == -P.TRUNCATED - 1


def test_pcapng_bad_block_length(tmp_path):
    blob = bytearray(pcapng_file([1], [(0, FRAME)]))
    last = len(blob) - ((len(FRAME) + 3) // 4 * 4 + 32)
    blob[last + 4:last + 8] = (7).to_bytes(4, "little")
    with PcapReader(write(tmp_path, "b.pcapng", bytes(blob))) as r:
        assert list(r) == []
        assert r.errors["bad_block"] == 1


def test_not_a_capture(tmp_path):
    with pytest.raises(CaptureError, match="not a pcap or pcapng"):
        PcapReader(write(tmp_path, "n.pcap", b"hello, I am text"))
    with pytest.raises(CaptureError, match="empty"):
        PcapReader(write(tmp_path, "e.pcap", b""))
    with pytest.raises(CaptureError):
        PcapReader(str(tmp_path / "missing.pcap"))


# Real captures: every link type of the corpus decodes to IP.
@pytest.mark.parametrize("name,linktype", [
    ("whatsapp.pcap", 1), ("BGP_redist.pcap", 104), ("BGP_Cisco_hdlc_slarp.pcap", 9), ("bjnp.pcap", 101),
    ("someip_sd_sample.pcap", 192), ("rtcp_multiple_pkts_in_the_same_datagram.pcap", 113),
    ("http2.pcapng", 113), ("nats.pcap", 0), ("ossfuzz_seed_fake_traces_4.pcapng", 228), ("sctp.cap", 1),
    ("gre.pcapng", 1),
])
def test_real_captures_decode(name, linktype):
    with PcapReader(os.path.join(DATA, name)) as r:
        recs = list(r)
        decoded = [P.decode(lt, f) for lt, _, f in recs]
    assert recs and all(lt == linktype for lt, _, _ in recs)
    ok = [d for d in decoded if not isinstance(d, int)]
    assert len(ok) >= 0.5 * len(recs), f"only {len(ok)}/{len(recs)} frames reached IP"


def test_fcs_bits_in_linktype_are_ignored():
    with PcapReader(os.path.join(DATA, "fuzz-2021-10-13.pcap")) as r:
        list(r)
        assert r.errors  # its one record is broken: counted, not raised


def test_fragment_garbage_is_counted():
    reasons = set()
    with PcapReader(os.path.join(DATA, "ip_fragmented_garbage.pcap")) as r:
        for lt, _, f in r:
            d = P.decode(lt, f)
            if isinstance(d, int):
                reasons.add(P.SKIP_REASONS[-d - 1])
    assert "fragment" in reasons


def test_bad_packets_decode_without_exceptions():
    with PcapReader(os.path.join(DATA, "badpackets.pcap")) as r:
        decoded = [P.decode(lt, f) for lt, _, f in r]
    assert len(decoded) == 93
