"""The ring reader against a ring laid out by hand, in the states Linux 6.18 was seen to leave it in after
an overload (docs/reliability.md), which no test can make a kernel produce on demand: a block the kernel
went past without handing it over, still in place or already reused. The real kernel's ring is tested in
tests/test_afpacket.py and tests/e2e/test_overload.py."""
import math
import mmap
import socket
import struct

from daemon import metrics as M
from daemon.capture import afpacket as A

MAC = 80  # where a frame's bytes start after its tpacket3_hdr and link-layer address, as the kernel lays it


def lay_block(mm, k, seq, frames, handed_over):
    """Block k: its descriptor (status, num_pkts, offset to the first frame, sequence number) and frames."""
    off = k * A.RING_BLOCK
    p = off + 48
    struct.pack_into("<III", mm, off + 8, A.TP_STATUS_USER if handed_over else 0, len(frames), 48)
    struct.pack_into("<Q", mm, off + 24, seq)
    for j, data in enumerate(frames):
        slot = (MAC + len(data) + 15) // 16 * 16
        nxt = slot if j < len(frames) - 1 else 0
        struct.pack_into("<IIIIIIH", mm, p, nxt, 1, 0, len(data), len(data), 0, MAC)
        mm[p + MAC:p + MAC + len(data)] = data
        p += slot


def read_ring(mm, name):
    """Every frame the reader hands over until it first finds nothing to read."""
    src = A.AfPacketSource(name, timeout=0.01)
    a, b = socket.socketpair()  # something to poll that never becomes readable
    src.sock, src._mm, src._next_check = a, mm, math.inf
    got = []
    try:
        for blk in src._blocks():
            if blk is None:
                break
            got += [bytes(f) for _, _, f in blk.frames()]
    finally:
        a.close()
        b.close()
    return got


def counts(name):
    return M.RING_HELD.labels(name)._value.get(), M.RING_LOST.labels(name)._value.get()


def test_a_block_left_behind_is_read_in_its_place():
    mm = mmap.mmap(-1, 4 * A.RING_BLOCK)
    lay_block(mm, 0, 1, [b"a1", b"a2", b"a3"], True)
    lay_block(mm, 1, 2, [b"b1", b"b2"], False)  # the kernel went on without handing it over
    lay_block(mm, 2, 3, [b"c1"], True)
    held0, lost0 = counts("ring-left")
    got = read_ring(mm, "ring-left")
    assert got == [b"a1", b"a2", b"a3", b"b1", b"b2", b"c1"]
    assert counts("ring-left") == (held0 + 2, lost0)
    # the blocks handed over went back to the kernel
    assert [struct.unpack_from("<I", mm, k * A.RING_BLOCK + 8)[0] for k in range(3)] == [0, 0, 0]


def test_a_block_reused_before_it_was_read_is_counted_lost():
    mm = mmap.mmap(-1, 4 * A.RING_BLOCK)
    lay_block(mm, 0, 1, [b"a1"], True)
    lay_block(mm, 1, 6, [b"f1"], False)  # number 2 was here; the kernel is filling it again as number 6
    lay_block(mm, 2, 3, [b"c1", b"c2"], True)
    lay_block(mm, 3, 4, [b"d1"], True)
    held0, lost0 = counts("ring-reused")
    got = read_ring(mm, "ring-reused")
    assert got == [b"a1", b"c1", b"c2", b"d1"]
    assert counts("ring-reused") == (held0, lost0 + 1)


def test_blocks_are_read_oldest_first_whatever_their_place():
    mm = mmap.mmap(-1, 4 * A.RING_BLOCK)
    lay_block(mm, 0, 5, [b"e1"], True)   # a lap ahead of the others: read last
    lay_block(mm, 1, 2, [b"b1"], True)
    lay_block(mm, 2, 3, [b"c1"], True)
    lay_block(mm, 3, 4, [b"d1"], True)
    got = read_ring(mm, "ring-order")
    assert got == [b"b1", b"c1", b"d1", b"e1"]
