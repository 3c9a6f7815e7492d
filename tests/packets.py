"""Hand-made packets and capture files for the tests (struct only, no scapy)."""
import struct

SRC4, DST4 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
SRC6 = bytes.fromhex("20010db8000000000000000000000001")
DST6 = bytes.fromhex("20010db8000000000000000000000002")


def tcp(sport=40000, dport=443, data=b"", hlen=20):
    opts = b"\x01" * (hlen - 20)
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, (hlen // 4) << 4, 0x18, 65535, 0, 0) + opts + data


def udp(sport=5353, dport=53, data=b""):
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def ipv4(l4, proto=6, src=SRC4, dst=DST4, frag=0, ihl=5, total=None, options=b""):
    total = 20 + len(options) + len(l4) if total is None else total
    return struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 1, frag, 64, proto, 0, src, dst) + options + l4


def ipv6(l4, nxt=6, ext=b"", src=SRC6, dst=DST6, plen=None):
    plen = len(ext) + len(l4) if plen is None else plen
    return struct.pack("!IHBB16s16s", 0x60000000, plen, nxt, 64, src, dst) + ext + l4


def ext_header(nxt, length_units=0, body=b""):
    """A generic IPv6 extension header (hop-by-hop, routing, dest options)."""
    size = (length_units + 1) * 8
    return bytes([nxt, length_units]) + body.ljust(size - 2, b"\0")


def frag_header(nxt, offset_units=0, more=0):
    return struct.pack("!BBHI", nxt, 0, (offset_units << 3) | more, 7)


def ether(payload, etype=0x0800, vlans=()):
    hdr = b"\x02" * 6 + b"\x04" * 6
    for tpid, vid in vlans:
        hdr += struct.pack("!H", tpid) + struct.pack("!H", vid)
    # with tags, each (tpid, vid) is followed by the next type; the final type last
    if vlans:
        out = b"\x02" * 6 + b"\x04" * 6
        types = [t for t, _ in vlans] + [etype]
        out += struct.pack("!H", types[0])
        for (t, vid), nxt in zip(vlans, types[1:]):
            out += struct.pack("!HH", vid, nxt)
        return out + payload
    return hdr + struct.pack("!H", etype) + payload


def pcap_file(records, linktype=1, endian="<", nano=False):
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for i, frame in enumerate(records):
        out += struct.pack(endian + "IIII", 1000 + i, 500, len(frame), len(frame)) + frame
    return out


def _block(btype, body, endian="<"):
    body = body + b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(endian + "II", btype, n) + body + struct.pack(endian + "I", n)


def pcapng_file(interfaces, packets, endian="<"):
    """interfaces: list of linktypes; packets: list of (interface index, frame)."""
    shb = struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1)
    out = _block(0x0A0D0D0A, shb, endian)
    for lt in interfaces:
        out += _block(1, struct.pack(endian + "HHI", lt, 0, 65535), endian)
    for i, (ifid, frame) in enumerate(packets):
        out += _block(6, struct.pack(endian + "IIIII", ifid, 0, 1000 + i, len(frame), len(frame)) + frame, endian)
    return out
