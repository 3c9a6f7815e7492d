"""Live capture from a Linux interface: an AF_PACKET raw socket, standard library only.

One socket per interface, read in one of two ways; either way a frame is a
memoryview valid until the next one is asked for (the pipeline copies what it
keeps):
- a TPACKET_V3 ring (PACKET_RX_RING, mmap): the kernel writes frames into
  shared blocks and hands over a block at a time, so a busy interface costs
  no system call per frame (recv_into cost two: Python polls before every
  read of a socket with a timeout). Frames carry the kernel's arrival time,
  so capture-to-decision latency includes the time a frame waited in the
  ring. Used by default on x86, whose loads are not reordered: reading a
  block's status and then its frames needs no barrier, which Python cannot
  issue on ARM (there the default is recv_into; capture.ring: on forces it).
  Blocks are read in the kernel's sequence order, which also finds blocks
  the kernel went past without handing them over (see _blocks);
- recv_into one preallocated buffer (SO_RCVBUF sized), one frame per call.
Iteration gives frames; `blocks()` gives a ring's blocks whole (RingBlock),
whose frame headers the pipeline can read at once with numpy.
Options, each a setsockopt:
- SO_RCVBUFFORCE (CAP_NET_ADMIN) or SO_RCVBUF: a large buffer for bursts;
- PACKET_STATISTICS: the frames the kernel handed over and its drops, which
  reset on every read, so they are accumulated into
  tc_daemon_kernel_packets_total and tc_daemon_kernel_drops_total;
- PACKET_IGNORE_OUTGOING: skip frames this host sends;
- PACKET_ADD_MEMBERSHIP/PACKET_MR_PROMISC: promiscuous mode, undone by the
  kernel when the socket closes;
- SO_ATTACH_FILTER: a classic BPF program, attached before bind so no frame
  slips through unfiltered;
- PACKET_FANOUT (hash, defrag): several processes share one interface, both
  directions of a flow going to the same one.

The socket reads with a timeout so the loop sees stop flags. When the
interface goes down or away, capture_up drops to 0, one line is logged, and
the socket is reopened with backoff once the interface is back
(capture_reopens_total counts it).
"""
from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import platform
import select
import shutil
import socket
import struct
import subprocess
import time

import numpy as np

from .. import metrics as M
from ..packet import LINKTYPE_ETHERNET, LINKTYPE_RAW

log = logging.getLogger("tc-daemon")

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
TPACKET_V3 = 2
TP_STATUS_USER = 1
PACKET_FANOUT = 18
PACKET_IGNORE_OUTGOING = 23
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_DEFRAG = 0x8000  # reassemble IP fragments before hashing, so they go to one worker
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
IFF_UP = 0x1

# ARPHRD_* -> what a SOCK_RAW read starts with
_ETHERNET_LIKE = {1, 772}                 # ETHER, LOOPBACK (Linux gives loopback Ethernet framing)
_RAW_IP = {65534, 512, 768, 769, 776, 778}  # NONE (tun, WireGuard), PPP, TUNNEL, TUNNEL6, SIT, IPGRE

BUFFER = 256 * 1024  # > 64 KiB: GSO super-frames of local traffic can exceed any MTU
STATS_EVERY = 1.0    # s between PACKET_STATISTICS reads and interface checks
BACKOFF = (0.25, 5.0)
# The ring: many small blocks rather than a few large ones, since the kernel hands over a block when
# it is full or RING_RETIRE_MS after its first frame, so at low rates every block may hold one frame
# and the block count, not the bytes, is what absorbs a stall. 64 KiB keeps GSO super-frames whole.
RING_BLOCK = 64 * 1024
RING_FRAME = 2048            # only for the kernel's bookkeeping: TPACKET_V3 frames are variable-length
RING_RETIRE_MS = 2
_HDR = struct.Struct("<IIIIIIH")  # tpacket3_hdr: next_offset, sec, nsec, snaplen, len, status, mac
_NEXT = struct.Struct("<I")
# tpacket_block_desc with tpacket_hdr_v1: block_status, num_pkts, offset_to_first_pkt at 8, seq_num at 24
_BLOCK = struct.Struct("<8xIII4xQ")
_SLL_PKTTYPE = 48 + 10            # sockaddr_ll.sll_pkttype after the 48-byte aligned tpacket3_hdr
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")


class BpfError(Exception):
    """A filter expression that cannot be compiled (one line)."""


def linktype_of(interface: str) -> int:
    try:
        with open(f"/sys/class/net/{interface}/type") as f:
            arphrd = int(f.read())
    except (OSError, ValueError):
        return LINKTYPE_ETHERNET
    if arphrd in _RAW_IP:
        return LINKTYPE_RAW
    if arphrd not in _ETHERNET_LIKE:
        log.warning("%s: link type ARPHRD %d unknown; reading its frames as Ethernet", interface, arphrd)
    return LINKTYPE_ETHERNET


def interface_up(interface: str) -> bool:
    try:
        with open(f"/sys/class/net/{interface}/flags") as f:
            return bool(int(f.read(), 16) & IFF_UP)
    except (OSError, ValueError):
        return False


def compile_bpf(expr, linktype: int = LINKTYPE_ETHERNET):
    """A list of (code, jt, jf, k): given as such, or compiled from a tcpdump expression with `tcpdump -ddd`.

    Compiled for the link type, not a live interface: libpcap's Linux-only
    extensions (e.g. `vlan` matching tags the kernel already stripped) do not apply.
    """
    if expr is None:
        return None
    if not isinstance(expr, str):
        return [tuple(int(x) for x in i) for i in expr]
    exe = shutil.which("tcpdump") or next((p for p in ("/usr/sbin/tcpdump", "/usr/bin/tcpdump")
                                           if os.path.exists(p)), None)
    if not exe:
        raise BpfError("capture.bpf_filter: a filter expression needs tcpdump to compile it (not installed); "
                       "install tcpdump or give the output of `tcpdump -ddd EXPR` as a list")
    dlt = "EN10MB" if linktype == LINKTYPE_ETHERNET else "RAW"
    try:
        r = subprocess.run([exe, "-ddd", "-y", dlt, expr], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BpfError(f"capture.bpf_filter: cannot run tcpdump: {e}") from None
    lines = r.stdout.split()
    if r.returncode != 0 or not lines:
        msg = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise BpfError(f"capture.bpf_filter: tcpdump cannot compile {expr!r}: {msg}")
    n = int(lines[0])
    nums = [int(x) for x in lines[1:]]
    if len(nums) != 4 * n:
        raise BpfError(f"capture.bpf_filter: unexpected tcpdump -ddd output for {expr!r}")
    return [tuple(nums[i:i + 4]) for i in range(0, len(nums), 4)]


def attach_bpf(sock, program):
    """SO_ATTACH_FILTER: struct sock_fprog {unsigned short len; struct sock_filter *filter;}."""
    insns = b"".join(struct.pack("HBBI", c, jt, jf, k) for c, jt, jf, k in program)
    buf = ctypes.create_string_buffer(insns, len(insns))
    fprog = struct.pack("@HP", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies it: buf may go


class RingBlock:
    """One ready block of the ring, valid until the source is asked for what follows it: its frames
    one by one (`frames()`, as iteration gives them) or all at once as arrays (`arrays()`)."""
    __slots__ = ("linktype", "mm", "view", "ring", "first", "n", "base", "filter_out")

    def __init__(self, linktype, mm, view, ring, first, n, base, filter_out):
        self.linktype, self.mm, self.view, self.ring = linktype, mm, view, ring  # ring: numpy over the mmap
        self.first, self.n, self.base, self.filter_out = first, n, base, filter_out

    def frames(self):
        """(linktype, monotonic ts, frame view) per frame."""
        mm, view, lt, base, filter_out = self.mm, self.view, self.linktype, self.base, self.filter_out
        hdr = _HDR.unpack_from
        p = self.first
        for _ in range(self.n):
            nxt, sec, nsec, snap, _len, _st, mac = hdr(mm, p)
            if not (filter_out and mm[p + _SLL_PKTTYPE] == PACKET_OUTGOING):
                yield lt, sec + nsec * 1e-9 - base, view[p + mac:p + mac + snap]
            p += nxt

    def arrays(self):
        """(start of each frame in `ring`, its captured length, its monotonic arrival time), as arrays.
        Only the chain of next-frame offsets is walked in Python; the headers are read by numpy."""
        unpack, mm = _NEXT.unpack_from, self.mm
        pos, p = [], self.first
        for _ in range(self.n):
            pos.append(p)
            p += unpack(mm, p)[0]
        at = np.array(pos, np.intp)
        ring = self.ring
        # tpacket3_hdr fields are aligned (frames start on 16-byte boundaries): read as u32 / u16
        u32 = ring[:len(ring) // 4 * 4].view("<u4")
        sec, nsec, snap = u32[(at >> 2) + 1], u32[(at >> 2) + 2], u32[(at >> 2) + 3]
        mac = ring[:len(ring) // 2 * 2].view("<u2")[(at >> 1) + 12]
        if self.filter_out:
            keep = ring[at + _SLL_PKTTYPE] != PACKET_OUTGOING
            at, sec, nsec, snap, mac = at[keep], sec[keep], nsec[keep], snap[keep], mac[keep]
        return at + mac, snap.astype(np.intp), sec + nsec * 1e-9 - self.base


class AfPacketSource:
    """Frames from one interface: iterate for (linktype, monotonic ts, frame) or None on idle."""
    live = True
    finite = False

    def __init__(self, interface: str, promiscuous: bool = False, ignore_outgoing: bool = False,
                 rcvbuf_bytes: int = 4 << 20, bpf=None, fanout_group=None, timeout: float = 0.25,
                 ring="auto", retire_ms: int = RING_RETIRE_MS):
        """`rcvbuf_bytes`: the socket buffer, or the ring's size. `ring`: "auto" (on x86), "on", "off".
        `retire_ms`: the ring's block timeout (tests set it long to stand for a timer that stopped)."""
        self.name = self.interface = interface
        self.ring = ring == "on" or (ring == "auto" and _X86)
        self.retire_ms = retire_ms
        self._mm = None  # the mapped ring while open
        self.promiscuous, self.ignore_outgoing = promiscuous, ignore_outgoing
        self.rcvbuf_bytes, self.bpf, self.fanout_group, self.timeout = rcvbuf_bytes, bpf, fanout_group, timeout
        self._buf = bytearray(BUFFER)
        self._view = memoryview(self._buf)
        self.sock = None
        self.ifindex = None
        self.linktype = LINKTYPE_ETHERNET
        self.kernel_drops = 0
        self.kernel_packets = 0
        self.reopens = 0
        self.rcvbuf = 0
        self._filter_outgoing = False
        self._closed = False
        self._next_check = 0.0
        self._up = M.CAPTURE_UP.labels(interface)
        self._drops = M.KERNEL_DROPS.labels(interface)
        self._kernel_packets = M.KERNEL_PACKETS.labels(interface)
        self._held = M.RING_HELD.labels(interface)
        self._ring_lost = M.RING_LOST.labels(interface)
        self._reopens = M.CAPTURE_REOPENS.labels(interface)

    def open(self):
        """Open and bind the socket. OSError (e.g. ENODEV, EPERM) if it cannot be."""
        ifindex = socket.if_nametoindex(self.interface)  # OSError ENODEV if absent
        linktype = linktype_of(self.interface)
        program = compile_bpf(self.bpf, linktype) if isinstance(self.bpf, str) else self.bpf
        # protocol 0: nothing is queued until bind, so options apply to every frame we read
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        mm = None
        try:
            if self.ring:
                mm = self._map_ring(s)
                self.rcvbuf = len(mm)
            else:
                try:
                    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.rcvbuf_bytes)
                except PermissionError:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf_bytes)
                self.rcvbuf = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            if program:
                attach_bpf(s, program)
            self._filter_outgoing = False
            if self.ignore_outgoing:
                try:
                    s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
                except OSError:  # kernels before 4.20: filter on the packet type instead
                    self._filter_outgoing = True
            s.bind((self.interface, ETH_P_ALL))
            if self.promiscuous:
                s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC,
                                                                            0, b""))
            if self.fanout_group is not None:
                mode = PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG
                s.setsockopt(SOL_PACKET, PACKET_FANOUT, struct.pack("I", self.fanout_group | (mode << 16)))
            s.settimeout(0.0 if mm is not None else self.timeout)  # the ring waits in poll(), not in recv
        except OSError:
            s.close()
            raise
        self.sock, self.ifindex, self.linktype, self._mm = s, ifindex, linktype, mm
        self._up.set(1)

    def _map_ring(self, s):
        """PACKET_VERSION 3 and PACKET_RX_RING of about rcvbuf_bytes, mapped. The mapping keeps the ring
        alive after the socket closes, until the last view of a frame is gone."""
        blocks = max(4, self.rcvbuf_bytes // RING_BLOCK)
        s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        # tpacket_req3: block_size, block_nr, frame_size, frame_nr, retire_blk_tov, sizeof_priv, feature_req_word
        s.setsockopt(SOL_PACKET, PACKET_RX_RING, struct.pack("7I", RING_BLOCK, blocks, RING_FRAME,
                                                              RING_BLOCK // RING_FRAME * blocks, self.retire_ms,
                                                              0, 0))
        return mmap.mmap(s.fileno(), RING_BLOCK * blocks, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    def read_stats(self):
        """Accumulate PACKET_STATISTICS (the kernel resets them on each read)."""
        if self.sock is None:
            return
        try:
            packets, drops = struct.unpack("II", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        except OSError:
            return
        self.kernel_packets += packets
        self._kernel_packets.inc(packets)
        if drops:
            self.kernel_drops += drops
            self._drops.inc(drops)

    def _still_there(self) -> bool:
        try:
            return socket.if_nametoindex(self.interface) == self.ifindex and interface_up(self.interface)
        except OSError:
            return False

    def _lost(self, why: str):
        self.read_stats()
        if self.sock is not None:
            self.sock.close()
        self.sock = self._mm = None  # not mm.close(): the consumer may still hold the last frame's view
        self._up.set(0)
        log.warning("capture on %s lost (%s); reopening when it is back", self.interface, why)

    def __iter__(self):
        """(linktype, monotonic ts, frame) per frame, or None when idle."""
        for rec in self._records():
            if rec.__class__ is RingBlock:
                yield from rec.frames()
            else:
                yield rec

    def blocks(self):
        """As iteration, but a ring hands over a RingBlock at a time (recv_into still gives frames)."""
        return self._records()

    def _check(self, now: float) -> bool:
        """Once a second: read the kernel's counters and see that the interface is still there.
        False (and the socket closed) when it is not."""
        if now < self._next_check:
            return True
        self._next_check = now + STATS_EVERY
        self.read_stats()
        if not self._still_there():
            self._lost("interface down or gone")
            return False
        return True

    def _records(self):
        view, buf = self._view, self._buf
        mono = time.monotonic
        delay = BACKOFF[0]
        was_open = self.sock is not None
        self._next_check = mono() + STATS_EVERY
        while not self._closed:
            if self.sock is None:
                try:
                    if not interface_up(self.interface):
                        raise OSError(errno.ENETDOWN, "interface down or absent")
                    self.open()
                except OSError as e:
                    if e.errno in (errno.EPERM, errno.EACCES):
                        raise  # no CAP_NET_RAW: retrying cannot help
                    end = mono() + delay
                    delay = min(delay * 2, BACKOFF[1])
                    while mono() < end and not self._closed:
                        time.sleep(min(self.timeout, max(0.0, end - mono())))
                        yield None
                    continue
                delay = BACKOFF[0]
                if was_open:
                    self.reopens += 1
                    self._reopens.inc()
                    log.info("capture on %s reopened", self.interface)
                was_open = True
                self._next_check = mono() + STATS_EVERY
            if self._mm is not None:
                yield from self._blocks()
                continue
            sock = self.sock
            try:
                if self._filter_outgoing:
                    n, addr = sock.recvfrom_into(buf, 0, socket.MSG_TRUNC)
                    if addr[2] == PACKET_OUTGOING:
                        continue
                else:
                    n = sock.recv_into(buf, 0, socket.MSG_TRUNC)
            except socket.timeout:
                self._check(mono())
                yield None
                continue
            except OSError as e:
                if self._closed:
                    return
                self._lost(os.strerror(e.errno) if e.errno else str(e))
                continue
            now = mono()
            self._check(now)  # a busy interface never times out: check on the way (the frame read counts)
            yield self.linktype, now, view[:min(n, BUFFER)]

    def _blocks(self):
        """Ready ring blocks, a RingBlock each, until the socket is lost or closed; a block goes back to
        the kernel when the consumer asks for what follows it.

        Blocks are read in the order of the sequence number the kernel gives each as it opens it (from
        1, round the ring). Linux 6.18 was seen, after the ring had been full, to go past a block without
        handing it over (docs/reliability.md), so two cases are looked for whenever the next block is
        not ready:
        - a later block is ready: the kernel has left the blocks before it. A skipped block still in
          place (its number, kernel-owned) is read as it is; one reused already has lost its frames,
          which the kernel counted as handed over, not dropped (tc_daemon_ring_lost_blocks_total, and a
          log line). Reading goes on at the oldest ready block;
        - none is, and a poll wait ended idle: frames that the block being filled already held at the
          previous idle wait (so written by now) go to the consumer, the rest when it is handed over.
        Frames read from blocks not handed over are counted in tc_daemon_ring_held_frames_total."""
        mm, sock = self._mm, self.sock
        view, ring = memoryview(mm), np.frombuffer(mm, np.uint8)
        block, unpack_next = _BLOCK.unpack_from, _NEXT.unpack_from
        lt, filter_out, n_blocks = self.linktype, self._filter_outgoing, len(mm) // RING_BLOCK
        mono, wall = time.monotonic, time.time
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | select.POLLERR)
        wait_ms = int(self.timeout * 1000)

        def oldest_ready():
            """(sequence number, index) of the oldest block handed over, or None."""
            ready = [(b[3], k) for k, b in ((k, block(mm, k * RING_BLOCK)) for k in range(n_blocks))
                     if b[0] & TP_STATUS_USER]
            return min(ready) if ready else None

        def copied(off, start, count):
            """A RingBlock of `count` frames from `start`, over a copy of the block at `off`, which the
            kernel has not handed over and so may reuse at any time; None if it did while we copied."""
            copy = bytearray(mm[off:off + RING_BLOCK])
            if block(mm, off)[3] != seq:  # reopened: its number is written before any frame (x86 TSO)
                return None
            return RingBlock(lt, copy, memoryview(copy), np.frombuffer(copy, np.uint8), start - off, count,
                             wall() - mono(), filter_out)

        i, seq = 0, 1   # the next block to read and its sequence number
        started = False  # a block has been read (the kernel's first number is then known)
        read = 0        # frames of block i already handed over while the kernel held it open
        at = 0          # ... and where the next of its frames starts
        noted = None    # block i's frame count at the last idle wait, if the kernel was filling it
        while not self._closed and self._mm is mm:
            off = i * RING_BLOCK
            if not self._check(mono()):  # a busy interface never waits in poll: check on the way
                return
            status, n, first, snum = block(mm, off)
            if status & TP_STATUS_USER and snum == seq:
                # kernel arrival times are wall-clock: one offset per block turns them monotonic
                yield RingBlock(lt, mm, view, ring, at if read else off + first, n - read, wall() - mono(),
                                filter_out)
                struct.pack_into("I", mm, off + 8, 0)  # TP_STATUS_KERNEL: the kernel may fill it again
                i, seq, read, noted, started = (i + 1) % n_blocks, seq + 1, 0, None, True
                continue
            events = None
            if not status & TP_STATUS_USER:
                events = poller.poll(wait_ms)
                status, n, first, snum = block(mm, off)
                if status & TP_STATUS_USER and snum == seq:
                    continue
                if events and events[0][1] & select.POLLERR:  # e.g. ENETDOWN: read (and so clear) it, then look
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if not self._still_there():
                        self._lost(os.strerror(err) if err else "interface down or gone")
                        return
            oldest = oldest_ready()
            if oldest is not None:  # out of sequence: the kernel went past blocks it did not hand over
                lost = 0
                while started and seq < oldest[0]:  # each skipped block: still in place, or reused already
                    status, n, first, snum = block(mm, off)
                    rb = None
                    if snum == seq and not status & TP_STATUS_USER:
                        rb = copied(off, at if read else off + first, n - read)
                    if rb is None:
                        lost += 1
                    elif rb.n:
                        self._held.inc(rb.n)
                        yield rb
                    i, seq, read = (i + 1) % n_blocks, seq + 1, 0
                    off = i * RING_BLOCK
                if lost:
                    self._ring_lost.inc(lost)
                    log.warning("capture on %s: the kernel reused %d ring block(s) before they were read "
                                "(their frames are lost; it counted them as handed over)", self.interface, lost)
                (seq, i), read, noted, started = oldest, 0, None, True
                continue
            if events:
                noted = None
                continue
            if snum != seq:  # not reopened since we read it: nothing new
                noted = None
            elif noted is not None and read < noted <= n:
                rb = copied(off, at if read else off + first, noted - read)
                if rb is not None:
                    at = off + rb.first
                    for _ in range(rb.n):
                        at += unpack_next(rb.mm, at - off)[0]
                    self._held.inc(rb.n)
                    read, noted = noted, n
                    yield rb
            else:
                noted = n
            yield None

    def close(self):
        self._closed = True
        if self.sock is not None:
            self.read_stats()
            self.sock.close()
            self.sock = None
        self._mm = None
        self._up.set(0)
