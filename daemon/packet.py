"""Link layers -> an IP packet view; IP -> the fields the flow table needs.

Everything here returns plain ints and tuples and never raises on bad input:
a frame we cannot use is reported as a skip reason (an index into
SKIP_REASONS) so that callers count it. Malformed traffic is normal at a
gateway, not exceptional.
"""
from __future__ import annotations

import struct

import numpy as np

# Skip reasons, in a fixed order so they can be counted in a numpy array.
SKIP_REASONS = (
    "not_ip",              # ARP, LLDP, STP, ... (fine, just not ours)
    "unsupported_linktype",
    "truncated",           # a header runs past the captured bytes
    "bad_header",          # version/IHL/extension-header chain nonsense
    "bad_length",          # IP total length shorter than its own header
    "fragment",            # a non-first fragment: no transport header to see
)
NOT_IP, UNSUPPORTED_LINKTYPE, TRUNCATED, BAD_HEADER, BAD_LENGTH, FRAGMENT = range(len(SKIP_REASONS))

# Link types (https://www.tcpdump.org/linktypes.html)
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_PPP = 9
LINKTYPE_RAW = 101
LINKTYPE_RAW_OPENBSD = 12  # DLT_RAW's value on some BSDs
LINKTYPE_RAW_14 = 14
LINKTYPE_PPP_HDLC = 50
LINKTYPE_C_HDLC = 104
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_PPI = 192
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

ETH_IPV4, ETH_IPV6 = 0x0800, 0x86DD
VLAN_TYPES = (0x8100, 0x88A8, 0x9100, 0x9200)
ETH_PPPOE_SESSION = 0x8864
ETH_MPLS = (0x8847, 0x8848)
PPP_IPV4, PPP_IPV6 = 0x0021, 0x0057

_u16 = struct.Struct("!H").unpack_from


def _ip_by_version(frame, off: int) -> int:
    """For encapsulations that do not name the payload (MPLS, raw): peek."""
    if off >= len(frame):
        return -TRUNCATED - 1
    v = frame[off] >> 4
    return off if v in (4, 6) else -NOT_IP - 1


def _ethertype(frame, off: int, etype: int) -> int:
    """Walk VLAN/QinQ, PPPoE and MPLS to the IP header. Returns offset or -(reason+1)."""
    n = len(frame)
    for _ in range(8):  # bounded: a frame of nested tags must not loop us
        if etype == ETH_IPV4 or etype == ETH_IPV6:
            return off
        if etype in VLAN_TYPES:
            if off + 4 > n:
                return -TRUNCATED - 1
            etype = _u16(frame, off + 2)[0]
            off += 4
        elif etype == ETH_PPPOE_SESSION:
            if off + 8 > n:
                return -TRUNCATED - 1
            proto = _u16(frame, off + 6)[0]
            if proto not in (PPP_IPV4, PPP_IPV6):
                return -NOT_IP - 1
            return off + 8
        elif etype in ETH_MPLS:
            while True:
                if off + 4 > n:
                    return -TRUNCATED - 1
                bottom = frame[off + 2] & 1
                off += 4
                if bottom:
                    return _ip_by_version(frame, off)
        else:
            return -NOT_IP - 1
    return -BAD_HEADER - 1


def _ppp(frame, off: int) -> int:
    n = len(frame)
    if off + 4 <= n and frame[off] in (0x0F, 0x8F) and frame[off + 1] == 0:
        # Cisco HDLC framing under the PPP link type (as tcpdump also accepts)
        return _ethertype(frame, off + 4, _u16(frame, off + 2)[0])
    if off + 2 <= n and frame[off] == 0xFF and frame[off + 1] == 0x03:
        off += 2  # HDLC address/control
    if off >= n:
        return -TRUNCATED - 1
    if frame[off] & 1:  # protocol-field compression: one byte
        proto, off = frame[off], off + 1
    else:
        if off + 2 > n:
            return -TRUNCATED - 1
        proto, off = _u16(frame, off)[0], off + 2
    if proto in (PPP_IPV4, PPP_IPV6):
        return off
    return -NOT_IP - 1


def ip_offset(linktype: int, frame) -> int:
    """Offset of the IP header in `frame`, or -(reason+1) for a skip."""
    n = len(frame)
    if linktype == LINKTYPE_ETHERNET:
        if n < 14:
            return -TRUNCATED - 1
        return _ethertype(frame, 14, _u16(frame, 12)[0])
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_RAW_OPENBSD, LINKTYPE_RAW_14):
        return _ip_by_version(frame, 0)
    if linktype == LINKTYPE_LINUX_SLL:
        if n < 16:
            return -TRUNCATED - 1
        return _ethertype(frame, 16, _u16(frame, 14)[0])
    if linktype == LINKTYPE_LINUX_SLL2:
        if n < 20:
            return -TRUNCATED - 1
        return _ethertype(frame, 20, _u16(frame, 0)[0])
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if n < 4:
            return -TRUNCATED - 1
        # NULL stores the family in the writer's byte order; LOOP in network order.
        fam = int.from_bytes(frame[0:4], "little")
        if fam > 0xFFFF:
            fam = int.from_bytes(frame[0:4], "big")
        if fam == 2:
            return 4
        if fam in (10, 23, 24, 28, 30):  # AF_INET6 on Linux, Windows, BSDs, macOS
            return 4
        return -NOT_IP - 1
    if linktype in (LINKTYPE_PPP, LINKTYPE_PPP_HDLC):
        return _ppp(frame, 0)
    if linktype == LINKTYPE_C_HDLC:
        if n < 4:
            return -TRUNCATED - 1
        return _ethertype(frame, 4, _u16(frame, 2)[0])  # an EtherType: VLAN, PPPoE, MPLS as on Ethernet
    if linktype == LINKTYPE_PPI:
        if n < 8:
            return -TRUNCATED - 1
        hlen = int.from_bytes(frame[2:4], "little")
        dlt = int.from_bytes(frame[4:8], "little")
        if hlen < 8 or hlen > n or dlt == LINKTYPE_PPI:
            return -BAD_HEADER - 1
        inner = ip_offset(dlt, frame[hlen:])
        return inner + hlen if inner >= 0 else inner
    return -UNSUPPORTED_LINKTYPE - 1


# IPv6 extension headers that we step over to reach the transport header.
_IPV6_EXT = {0, 43, 60, 135, 139, 140}
_IPV6_FRAG, _IPV6_AH = 44, 51
MAX_IPV6_EXT = 10  # a longer chain is hostile, not real


def parse_ip(frame, off: int):
    """Parse the IP header at `off`.

    Returns (version, proto, src, dst, l4_off, l4_end) where l4_off..l4_end is
    the IP payload (transport header + data) within the captured bytes, and
    src/dst are the raw address bytes; or a negative int -(reason+1).
    """
    n = len(frame)
    if off + 1 > n:
        return -TRUNCATED - 1
    v = frame[off] >> 4
    if v == 4:
        if off + 20 > n:
            return -TRUNCATED - 1
        ihl = (frame[off] & 0x0F) * 4
        if ihl < 20:
            return -BAD_HEADER - 1
        if off + ihl > n:
            return -TRUNCATED - 1
        total = _u16(frame, off + 2)[0]
        if total < ihl:
            if total != 0:  # 0 = TSO-offloaded capture; trust the captured bytes
                return -BAD_LENGTH - 1
            total = n - off
        if _u16(frame, off + 6)[0] & 0x1FFF:
            return -FRAGMENT - 1
        end = min(off + total, n)
        return 4, frame[off + 9], bytes(frame[off + 12:off + 16]), bytes(frame[off + 16:off + 20]), off + ihl, end
    if v == 6:
        if off + 40 > n:
            return -TRUNCATED - 1
        plen = _u16(frame, off + 4)[0]
        end = min(off + 40 + plen, n) if plen else n  # 0 = jumbogram: take what was captured
        nxt = frame[off + 6]
        p = off + 40
        for _ in range(MAX_IPV6_EXT):
            if nxt in _IPV6_EXT:
                if p + 8 > end:
                    return -TRUNCATED - 1
                nxt, p = frame[p], p + (frame[p + 1] + 1) * 8
            elif nxt == _IPV6_FRAG:
                if p + 8 > end:
                    return -TRUNCATED - 1
                if _u16(frame, p + 2)[0] & 0xFFF8:
                    return -FRAGMENT - 1
                nxt, p = frame[p], p + 8
            elif nxt == _IPV6_AH:
                if p + 8 > end:
                    return -TRUNCATED - 1
                nxt, p = frame[p], p + (frame[p + 1] + 2) * 4
            else:
                break
        else:
            return -BAD_HEADER - 1
        if p > end:
            return -TRUNCATED - 1
        return 6, nxt, bytes(frame[off + 8:off + 24]), bytes(frame[off + 24:off + 40]), p, end
    return -BAD_HEADER - 1


def ports(frame, proto: int, l4_off: int, l4_end: int):
    """(sport, dport, data_offset) for TCP/UDP/SCTP, else (0, 0, l4_off).

    data_offset is where the application data starts, so callers can tell
    bare ACK/SYN/FIN packets (no data) from payload-carrying ones.
    """
    if proto in (6, 17, 132) and l4_off + 4 <= l4_end:
        sport, dport = struct.unpack_from("!HH", frame, l4_off)
        if proto == 6:
            if l4_off + 13 <= l4_end:
                return sport, dport, min(l4_off + (frame[l4_off + 12] >> 4) * 4, l4_end)
            return sport, dport, l4_end
        return sport, dport, min(l4_off + (8 if proto == 17 else 12), l4_end)
    return 0, 0, l4_off


# Ethernet + IPv4 without options, the gateway's common case, in one unpack: EtherType,
# version/IHL, total length, flags/fragment offset, protocol, source, destination.
_ETH_IP4 = struct.Struct("!12xHBxH2xHxB2x4s4s")


def decode(linktype: int, frame):
    """Frame -> (version, proto, src, dst, sport, dport, ip_off, l4_off, l4_end, data_off) or -(reason+1).

    Offsets index `frame`: the IP header starts at ip_off, its payload
    (transport header + data) is l4_off..l4_end, application data data_off..l4_end.
    """
    n = len(frame)
    if linktype == LINKTYPE_ETHERNET and n >= 34:
        etype, vihl, total, frag, proto, src, dst = _ETH_IP4.unpack_from(frame)
        if etype == ETH_IPV4 and vihl == 0x45 and total >= 20 and not frag & 0x1FFF:
            end = min(14 + total, n)
            sport, dport, data_off = ports(frame, proto, 34, end)
            return 4, proto, src, dst, sport, dport, 14, 34, end, data_off
    return decode_any(linktype, frame)


def decode_any(linktype: int, frame):
    """decode() for every link layer and header shape (decode's fast path falls back to this)."""
    off = ip_offset(linktype, frame)
    if off < 0:
        return off
    ip = parse_ip(frame, off)
    if isinstance(ip, int):
        return ip
    version, proto, src, dst, l4_off, l4_end = ip
    sport, dport, data_off = ports(frame, proto, l4_off, l4_end)
    return version, proto, src, dst, sport, dport, off, l4_off, l4_end, data_off


# --- a capture block at a time (numpy) ---------------------------------------------------------------
# Under load a TPACKET_V3 ring block holds hundreds of frames; decoding them one by one costs a tuple,
# two bytes objects and a dozen Python calls each. decode_block reads the headers of every frame of a
# block at once. It takes only what decode() takes without a walk: Ethernet or raw IP, IPv4 without
# options and not a fragment, IPv6 without extension headers; everything else is handed back for
# decode(). Results are the same as decode()'s, field for field (tests/test_packet.py holds it to that).

_WINDOW = np.arange(68, dtype=np.intp)  # Ethernet 14 + IPv6 40 + the TCP data offset byte at 12
_V6_CHAIN = np.zeros(256, bool)  # next-header values decode() walks (extension headers): left to it
_V6_CHAIN[sorted(_IPV6_EXT | {_IPV6_FRAG, _IPV6_AH})] = True
_NONE = np.zeros(0, np.intp)
_PORTS = np.zeros(256, bool)  # protocols ports() reads ports of
_PORTS[[6, 17, 132]] = True


def _layout(ip: int, version: int):
    """The header fields decode_block reads, as a numpy record over a frame's first 68 bytes, for an
    IP header at `ip` (14 behind Ethernet, 0 on raw links): reading a field is a view, not arithmetic."""
    if version == 4:  # version/IHL, total length, flags/fragment offset, protocol, addresses
        f = [("vihl", "u1", 0), ("total", ">u2", 2), ("frag", ">u2", 6), ("proto", "u1", 9),
             ("src", ("u1", 4), 12), ("dst", ("u1", 4), 16)]
        l4 = ip + 20
    else:  # version/class, payload length, next header, addresses
        f = [("vihl", "u1", 0), ("plen", ">u2", 4), ("proto", "u1", 6), ("src", ("u1", 16), 8),
             ("dst", ("u1", 16), 24)]
        l4 = ip + 40
    f = [(n, t, ip + o) for n, t, o in f] + [("sport", ">u2", l4), ("dport", ">u2", l4 + 2),
                                            ("doff", "u1", l4 + 12)]
    if ip:
        f.append(("etype", ">u2", 12))
    names, formats, offsets = zip(*f)
    return np.dtype({"names": list(names), "formats": list(formats), "offsets": list(offsets), "itemsize": 68})


_LAYOUTS = {(ip, v): _layout(ip, v) for ip in (0, 14) for v in (4, 6)}


class Decoded:
    """decode()'s fields for the frames `idx` of a block that share one IP version: arrays, except
    ip_off and l4_off (the same for all of them); src and dst are (n, 4) or (n, 16) uint8 rows."""
    __slots__ = ("version", "idx", "proto", "src", "dst", "sport", "dport", "ip_off", "l4_off", "l4_end",
                 "data_off")

    def __init__(self, version, idx, r, ip_off, l4_end):
        l4 = ip_off + (20 if version == 4 else 40)
        proto = r["proto"]
        self.version, self.idx, self.proto, self.ip_off, self.l4_off, self.l4_end = (version, idx, proto,
                                                                                     ip_off, l4, l4_end)
        self.src, self.dst = r["src"], r["dst"]
        # ports() for every row: TCP, UDP and SCTP with four bytes of header have ports
        has = _PORTS[proto] & (l4_end >= l4 + 4)
        self.sport, self.dport = r["sport"] * has, r["dport"] * has
        tcp_hdr = np.where(l4_end >= l4 + 13, np.minimum((r["doff"] >> 4).astype(np.intp) * 4 + l4, l4_end),
                           l4_end)
        other = np.minimum(np.where(proto == 17, l4 + 8, l4 + 12), l4_end)
        self.data_off = np.where(has, np.where(proto == 6, tcp_hdr, other), l4)


def decode_block(linktype: int, buf: np.ndarray, offs: np.ndarray, caplen: np.ndarray):
    """Frames buf[offs[i]:offs[i] + caplen[i]] -> ([Decoded per IP version present], indices of the rest).

    The rest (other link types, VLAN tags, IPv4 options, fragments, extension headers, short or
    malformed frames) is for decode(), frame by frame. A fixed window of each frame's first 68 bytes
    is read (clipped at the end of `buf`), but only bytes within the frame's caplen are ever used.
    """
    n = len(offs)
    if linktype == LINKTYPE_ETHERNET:
        ip = 14
    elif linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_RAW_OPENBSD, LINKTYPE_RAW_14):
        ip = 0
    else:
        return [], np.arange(n)
    if not len(buf):  # nothing captured at all: decode() says how each frame is short
        return [], np.arange(n)
    w = buf[np.minimum(offs[:, None] + _WINDOW, len(buf) - 1)]
    caplen = caplen.astype(np.intp)
    r4, r6 = w.view(_LAYOUTS[ip, 4]).ravel(), w.view(_LAYOUTS[ip, 6]).ravel()
    v4 = (r4["vihl"] == 0x45) & (r4["total"] >= 20) & (r4["frag"] & 0x1FFF == 0) & (caplen >= ip + 20)
    v6 = (r6["vihl"] >> 4 == 6) & ~_V6_CHAIN[r6["proto"]] & (caplen >= ip + 40)
    if ip:
        v4 &= r4["etype"] == ETH_IPV4
        v6 &= r6["etype"] == ETH_IPV6
    out = []
    if v4.all():  # the common block: no copies
        return [Decoded(4, np.arange(n), r4, ip, np.minimum(r4["total"].astype(np.intp) + ip, caplen))], _NONE
    if v4.any():
        i = np.flatnonzero(v4)
        r, c = r4[i], caplen[i]
        out.append(Decoded(4, i, r, ip, np.minimum(r["total"].astype(np.intp) + ip, c)))
    if v6.any():
        i = np.flatnonzero(v6)
        r, c = r6[i], caplen[i]
        plen = r["plen"].astype(np.intp)
        out.append(Decoded(6, i, r, ip, np.where(plen > 0, np.minimum(plen + ip + 40, c), c)))
    return out, np.flatnonzero(~(v4 | v6))
