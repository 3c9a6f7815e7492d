"""pcap and pcapng reading without tshark, detected by magic number.

A record is (linktype, timestamp_seconds, frame) where frame is a memoryview
into the file's buffer (no copy). Broken files end the iteration with a
counted reason in `reader.errors`; they never raise out of the loop, so one bad
capture cannot stop a corpus run.
"""
from __future__ import annotations

import mmap
import os
import struct
from collections import Counter
from typing import Iterator, Tuple

Record = Tuple[int, float, memoryview]

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
MAX_RECORD = 256 * 1024  # larger incl_len is a corrupt header, not a packet


class CaptureError(Exception):
    """A capture that cannot be read at all (missing, not pcap/pcapng)."""


def sniff_format(path: str) -> str:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic in PCAP_MAGICS:
        return "pcap"
    if magic == PCAPNG_SHB:
        return "pcapng"
    raise CaptureError(f"{path}: not a pcap or pcapng file (magic {magic.hex() or 'empty'})")


class PcapReader:
    """Iterate over the frames of a pcap or pcapng file.

    `errors` counts what ended or skipped records (truncated_record,
    bad_block, ...). Link types are returned as the low 16 bits (the upper bits
    of a pcap header's link type carry FCS information).
    """

    def __init__(self, path: str):
        self.path = path
        self.errors: Counter = Counter()
        try:
            self.format = sniff_format(path)
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                self._buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        except OSError as e:
            raise CaptureError(f"{path}: {e.strerror or e}") from None
        self._view = memoryview(self._buf)

    def close(self) -> None:
        self._view.release()
        if isinstance(self._buf, mmap.mmap):
            try:
                self._buf.close()
            except BufferError:  # a caller still holds a frame view; GC closes it later
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __iter__(self) -> Iterator[Record]:
        return self._pcap() if self.format == "pcap" else self._pcapng()

    def _pcap(self) -> Iterator[Record]:
        buf, view = self._buf, self._view
        if len(buf) < 24:
            self.errors["truncated_header"] += 1
            return
        endian, tsres = PCAP_MAGICS[bytes(buf[:4])]
        linktype = struct.unpack_from(endian + "I", buf, 20)[0] & 0xFFFF
        rec = struct.Struct(endian + "IIII")
        pos, end = 24, len(buf)
        while pos + 16 <= end:
            sec, frac, incl, _orig = rec.unpack_from(buf, pos)
            pos += 16
            if incl > MAX_RECORD:
                self.errors["bad_record_length"] += 1
                return  # the rest of the file cannot be framed
            if pos + incl > end:
                self.errors["truncated_record"] += 1
                return
            yield linktype, sec + frac * tsres, view[pos:pos + incl]
            pos += incl
        if pos != end:
            self.errors["truncated_record"] += 1

    def _pcapng(self) -> Iterator[Record]:
        buf, view = self._buf, self._view
        end = len(buf)
        pos = 0
        endian = "<"
        ifaces: list = []  # (linktype, ticks per second)
        while pos + 12 <= end:
            btype_raw = bytes(buf[pos:pos + 4])
            if btype_raw == PCAPNG_SHB:
                bom = bytes(buf[pos + 8:pos + 12])
                if bom == b"\x4d\x3c\x2b\x1a":
                    endian = "<"
                elif bom == b"\x1a\x2b\x3c\x4d":
                    endian = ">"
                else:
                    self.errors["bad_block"] += 1
                    return
                ifaces = []  # interfaces are per section
            btype, blen = struct.unpack_from(endian + "II", buf, pos)
            if blen < 12 or blen % 4 or pos + blen > end:
                self.errors["bad_block" if blen < 12 or blen % 4 else "truncated_record"] += 1
                return
            body = pos + 8
            body_end = pos + blen - 4
            if btype == 1 and body + 8 <= body_end:  # Interface Description Block
                lt = struct.unpack_from(endian + "H", buf, body)[0]
                ifaces.append([lt, _if_tsresol(buf, body + 8, body_end, endian)])
            elif btype == 6 and body + 20 <= body_end:  # Enhanced Packet Block
                ifid, hi, lo, cap, _orig = struct.unpack_from(endian + "IIIII", buf, body)
                if ifid >= len(ifaces) or body + 20 + cap > body_end:
                    self.errors["bad_block"] += 1
                else:
                    lt, res = ifaces[ifid]
                    yield lt, ((hi << 32) | lo) / res, view[body + 20:body + 20 + cap]
            elif btype == 3 and body + 4 <= body_end:  # Simple Packet Block
                orig = struct.unpack_from(endian + "I", buf, body)[0]
                cap = min(orig, body_end - body - 4)
                if not ifaces:
                    self.errors["bad_block"] += 1
                else:
                    yield ifaces[0][0], 0.0, view[body + 4:body + 4 + cap]
            elif btype == 2 and body + 20 <= body_end:  # obsolete Packet Block
                ifid, _drops, hi, lo, cap, _orig = struct.unpack_from(endian + "HHIIII", buf, body)
                if ifid >= len(ifaces) or body + 20 + cap > body_end:
                    self.errors["bad_block"] += 1
                else:
                    lt, res = ifaces[ifid]
                    yield lt, ((hi << 32) | lo) / res, view[body + 20:body + 20 + cap]
            pos += blen
        if pos != end:
            self.errors["truncated_record"] += 1


def _if_tsresol(buf, pos: int, end: int, endian: str) -> float:
    """Ticks per second from an IDB's if_tsresol option (default microseconds)."""
    while pos + 4 <= end:
        code, length = struct.unpack_from(endian + "HH", buf, pos)
        if code == 0:
            break
        if code == 9 and length >= 1 and pos + 5 <= end:
            v = buf[pos + 4]
            return float(2 ** (v & 0x7F)) if v & 0x80 else float(10 ** v)
        pos += 4 + ((length + 3) & ~3)
    return 1e6


def read_frames(path: str) -> Iterator[Record]:
    """Convenience: iterate a capture's frames (errors are dropped)."""
    with PcapReader(path) as r:
        yield from r
