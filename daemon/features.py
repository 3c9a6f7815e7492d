"""THE feature function: raw IP packets -> the model's input.

Training (models/dataset.py) and serving (daemon/pipeline.py) both call
`payload_bytes`; there is deliberately no second copy anywhere, so what a
model was trained on and what it sees at run time cannot drift apart.

Per packet, as in Dicks & Chavula (2021): the IP payload (transport header +
data) cut at 1480 bytes, zero-padded, with the first 20 bytes zeroed because
they hold the ports (and TCP sequence numbers) that would tie a model to one
network. The views below only reshape or rescale those bytes.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np

from .packet import parse_ip

N_BYTES = 1480
MASK = 20
LSTM_SHAPE = (40, 37)  # 40 time steps x 37 bytes = 1480


def payload_bytes(ip_packets: Sequence, l4_offsets: Optional[Iterable[int]] = None,
                  out: Optional[np.ndarray] = None) -> np.ndarray:
    """uint8[N, 1480]: each packet's IP payload, cut, zero-padded, first 20 bytes masked.

    `ip_packets` are buffers starting at the IP header. Callers that already
    parsed the headers (the pipeline) pass `l4_offsets` to skip re-parsing; a
    packet that is not parseable IP becomes a row of zeros. `out` lets the
    daemon reuse one preallocated array per batch.
    """
    n = len(ip_packets)
    if out is None:
        out = np.zeros((n, N_BYTES), np.uint8)
    else:
        out = out[:n]
        out.fill(0)
    offs = iter(l4_offsets) if l4_offsets is not None else None
    for i, pkt in enumerate(ip_packets):
        if offs is not None:
            start, end = next(offs), len(pkt)
        else:
            ip = parse_ip(pkt, 0)
            if isinstance(ip, int):
                continue
            start, end = ip[4], ip[5]
        if end - start > MASK:
            take = min(end - start, N_BYTES)
            # one memcpy per packet; the mask is applied to the whole batch below
            out[i, :take] = np.frombuffer(pkt, np.uint8, take, start)
    out[:, :MASK] = 0
    return out


# Views for the model families. All take the uint8[N,1480] from payload_bytes.
def as_flat(x: np.ndarray) -> np.ndarray:
    """float32[N,1480] in [0,1], for the SVM and the MLP."""
    return x.astype(np.float32) * np.float32(1.0 / 255.0)


def as_sequence(x: np.ndarray) -> np.ndarray:
    """float32[N,40,37] in [0,1], for the LSTM (40 time steps of 37 bytes)."""
    return as_flat(x).reshape(-1, *LSTM_SHAPE)


def as_int8(x: np.ndarray, shape=None) -> np.ndarray:
    """int8 view of the raw bytes for full-integer models.

    A model whose float input is bytes/255 quantises it with scale 1/255 and
    zero point -128, so q = byte - 128 = byte XOR 0x80 read as int8: no float
    conversion at all on the gateway.
    """
    q = (x ^ np.uint8(0x80)).view(np.int8)
    return q.reshape(-1, *shape) if shape else q


VIEWS = {"flat": (N_BYTES,), "sequence": LSTM_SHAPE}


def model_input(x: np.ndarray, view: str, dtype) -> np.ndarray:
    """The input a model expects, from its manifest's view and its input dtype."""
    shape = VIEWS[view]
    if np.dtype(dtype) == np.int8:
        return as_int8(x, shape)
    if np.dtype(dtype) == np.uint8:
        return x.reshape(-1, *shape)
    return as_flat(x).reshape(-1, *shape)


# A flow's shape, for models that read a flow rather than one packet (issue 9's ablation):
# per payload packet of its first FLOW_PACKETS, the size signed by direction (+ client to
# server) and the log gap since the flow's previous payload packet. No ports, no addresses.
FLOW_PACKETS = 16


def flow_shape(payload_len: np.ndarray, direction: np.ndarray, ts: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """float32[F, 2*FLOW_PACKETS] for F flows, given their payload packets in time order,
    flow after flow, flow i beginning at starts[i]; a shorter flow is zero-padded."""
    n = len(payload_len)
    ends = np.r_[starts[1:], n]
    rank = np.arange(n) - np.repeat(starts, ends - starts)
    flow = np.repeat(np.arange(len(starts)), ends - starts)
    size = np.minimum(payload_len, N_BYTES) / N_BYTES * np.where(direction == 0, 1.0, -1.0)
    gap = np.r_[0.0, np.diff(ts)]
    gap[rank == 0] = 0.0
    gap = np.minimum(np.log1p(np.maximum(gap, 0.0) * 1000.0) / 10.0, 1.0)  # ms, log, ~[0,1]
    out = np.zeros((len(starts), FLOW_PACKETS, 2), np.float32)
    use = rank < FLOW_PACKETS
    out[flow[use], rank[use], 0] = size[use]
    out[flow[use], rank[use], 1] = gap[use]
    return out.reshape(len(starts), -1)


FIRST_PACKETS = 3  # payload packets a flow-bytes model reads together (the daemon's default k)


def first_packets(x: np.ndarray, starts: np.ndarray, k: int = FIRST_PACKETS) -> np.ndarray:
    """uint8[F, k*1480]: the payload_bytes rows of each flow's first k payload packets side by
    side (rows in time order, flow after flow, flow i beginning at starts[i]); zero-padded."""
    n = len(x)
    ends = np.r_[starts[1:], n]
    out = np.zeros((len(starts), k, N_BYTES), np.uint8)
    for j in range(k):
        has = starts + j < ends
        out[has, j] = x[starts[has] + j]
    return out.reshape(len(starts), -1)
