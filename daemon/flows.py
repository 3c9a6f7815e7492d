"""Flow keys and the bounded flow table.

A flow is bidirectional: both directions of a 5-tuple share one key (the
lower endpoint first). Protocols without ports (ICMP, GRE, ESP, ...) are keyed
by address pair and protocol. The same key serves dataset building (which
packets share an nDPI label) and the daemon (which packets share a decision).
A key is one bytes object, protocol, lower endpoint, higher endpoint, each
endpoint its address and port (`key_fields` unpacks it): at 50k packets/s the
table holds tens of thousands of flows, and a tuple of five objects cost
about 170 bytes more per flow.
"""
from __future__ import annotations

import struct
from collections import OrderedDict

import numpy as np

IDLE_TIMEOUT = 120.0     # s without a packet ends a flow (nfstream's default)
ACTIVE_TIMEOUT = 1800.0  # s since the first packet ends a flow (nfstream's default)


_PACK = {4: struct.Struct("!B4sH4sH").pack, 16: struct.Struct("!B16sH16sH").pack}


def flow_key(proto: int, src: bytes, sport: int, dst: bytes, dport: int):
    """(key, reverse): key is direction-free bytes; reverse is True when src is the higher endpoint."""
    if (src, sport) <= (dst, dport):
        return _PACK[len(src)](proto & 0xFF, src, sport, dst, dport), False
    return _PACK[len(src)](proto & 0xFF, dst, dport, src, sport), True


def key_fields(key: bytes):
    """(proto, lower address, its port, higher address, its port) of a key."""
    n = (len(key) - 5) // 2
    return (key[0], key[1:1 + n], int.from_bytes(key[1 + n:3 + n], "big"), key[3 + n:3 + 2 * n],
            int.from_bytes(key[3 + 2 * n:], "big"))


def flow_keys(proto, src, sport, dst, dport):
    """flow_key() for many packets at once: src and dst are (n, 4) or (n, 16) uint8 address rows,
    the rest arrays. Returns ((n, key length) uint8 rows, each row the bytes of flow_key()'s key; reverse)."""
    n, a = src.shape
    ends = np.empty((2, n, a + 2), np.uint8)  # each endpoint as its bytes: address, then port big-endian
    ends[0, :, :a], ends[1, :, :a] = src, dst
    for e, port in ((0, sport), (1, dport)):
        ends[e, :, a], ends[e, :, a + 1] = port >> 8, port & 0xFF
    # (src, sport) > (dst, dport) compared as bytes: decided by the first byte where they differ
    diff = ends[0] != ends[1]
    first = diff.argmax(axis=1)
    rows = np.arange(n)
    reverse = diff[rows, first] & (ends[0, rows, first] > ends[1, rows, first])
    keys = np.empty((n, 1 + 2 * (a + 2)), np.uint8)
    keys[:, 0] = proto
    lo = np.where(reverse[:, None], ends[1], ends[0])
    keys[:, 1:a + 3] = lo
    keys[:, a + 3:] = np.where(reverse[:, None], ends[0], ends[1])
    return keys, reverse


class Flow:
    """One flow's state. `c2s_reverse` remembers which key side opened it; the endpoints are read from
    the key (one slot, not five: at 50k packets/s the table holds tens of thousands of flows)."""
    __slots__ = ("id", "first", "last", "c2s_reverse", "packets", "bytes", "s2c_packets", "s2c_bytes",
                 "scored", "prob_sum", "label", "confidence", "key")

    def __init__(self, fid, ts, key, reverse):
        self.id = fid
        self.first = self.last = ts
        self.c2s_reverse = reverse
        self.packets = 0
        self.bytes = 0
        self.s2c_packets = 0     # of those, server to client, while undecided (flow mode counts them then)
        self.s2c_bytes = 0
        self.scored = 0          # payload packets the model has seen
        self.prob_sum = None     # running sum of class probabilities
        self.label = -1          # class index once decided, -1 while undecided
        self.confidence = 0.0
        self.key = key

    # the client (first packet's sender) is src; read for output, not per packet
    proto = property(lambda f: f.key[0])
    src = property(lambda f: key_fields(f.key)[3 if f.c2s_reverse else 1])
    sport = property(lambda f: key_fields(f.key)[4 if f.c2s_reverse else 2])
    dst = property(lambda f: key_fields(f.key)[1 if f.c2s_reverse else 3])
    dport = property(lambda f: key_fields(f.key)[2 if f.c2s_reverse else 4])


class FlowTable:
    """LRU-bounded flow table with idle and active timeouts.

    Memory is bounded by `max_flows`: when full, the least recently seen flow
    is evicted (and reported to `on_expire`), so a SYN flood costs decisions,
    not memory.
    """

    def __init__(self, max_flows: int = 65536, idle_timeout: float = IDLE_TIMEOUT,
                 active_timeout: float = ACTIVE_TIMEOUT, on_expire=None):
        self.max_flows = max_flows
        self.idle_timeout = idle_timeout
        self.active_timeout = active_timeout
        self.on_expire = on_expire
        self._flows: "OrderedDict[bytes, Flow]" = OrderedDict()
        self._next_id = 0
        self.evicted = 0
        self.expired = 0

    def __len__(self):
        return len(self._flows)

    def get(self, key, reverse: bool, ts: float):
        """The flow for `key` at time `ts` (new if absent or timed out) and whether
        this packet goes client-to-server."""
        flows = self._flows
        f = flows.get(key)
        if f is not None and (ts - f.last > self.idle_timeout or ts - f.first > self.active_timeout):
            del flows[key]
            self.expired += 1
            if self.on_expire:
                self.on_expire(f)
            f = None
        if f is None:
            if len(flows) >= self.max_flows:
                _, old = flows.popitem(last=False)
                self.evicted += 1
                if self.on_expire:
                    self.on_expire(old)
            f = Flow(self._next_id, ts, key, reverse)
            self._next_id += 1
            flows[key] = f
        else:
            flows.move_to_end(key)
        f.last = ts
        return f, reverse == f.c2s_reverse

    def expire_idle(self, now: float) -> int:
        """Drop flows idle past the timeout (oldest first, so we stop early)."""
        n = 0
        flows = self._flows
        while flows:
            key, f = next(iter(flows.items()))
            if now - f.last <= self.idle_timeout:
                break
            del flows[key]
            n += 1
            if self.on_expire:
                self.on_expire(f)
        self.expired += n
        return n

    def values(self):
        return self._flows.values()

    def drain(self):
        """Remove and return every flow (end of a capture or shutdown)."""
        flows = list(self._flows.values())
        self._flows.clear()
        if self.on_expire:
            for f in flows:
                self.on_expire(f)
        return flows

