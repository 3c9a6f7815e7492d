"""The one feature function: payload cut/padded/masked; the views; the int8 raw-bytes path."""
import ast
import os

import numpy as np

from daemon import features as F
from tests.packets import ipv4, ipv6, tcp, udp, ext_header

ROOT = os.path.dirname(os.path.dirname(__file__))


def test_payload_cut_padded_masked():
    data = bytes(range(256)) * 8  # 2048 bytes
    big = ipv4(tcp(data=data))
    small = ipv4(udp(data=b"abc"))
    x = F.payload_bytes([big, small])
    assert x.dtype == np.uint8 and x.shape == (2, 1480)
    l4 = tcp(data=data)
    assert (x[0, :20] == 0).all()
    assert bytes(x[0, 20:]) == l4[20:1480]  # transport header + data, cut at 1480
    assert not x[1].any()  # 8-byte UDP header + 3 bytes: all within the mask


def test_ipv6_extension_headers_are_not_payload():
    l4 = udp(data=b"x" * 100)
    pkt = ipv6(l4, nxt=0, ext=ext_header(17, 0))
    x = F.payload_bytes([pkt])
    assert bytes(x[0, 20:len(l4)]) == l4[20:]


def test_precomputed_offsets_give_the_same_rows():
    pkts = [ipv4(tcp(data=b"payload" * 50)), ipv6(udp(data=b"q" * 300), nxt=17)]
    a = F.payload_bytes(pkts)
    b = F.payload_bytes([memoryview(p) for p in pkts], [20, 40])
    np.testing.assert_array_equal(a, b)


def test_unparseable_packet_is_zero_row_and_out_is_reused():
    out = np.full((4, 1480), 7, np.uint8)
    x = F.payload_bytes([b"\x00garbage", ipv4(tcp(data=b"z" * 40))], out=out)
    assert x.base is out or x is out[:2] or np.shares_memory(x, out)
    assert not x[0].any() and x[1, 20:40].tolist() == list(b"z" * 20)


def test_views():
    x = np.arange(2 * 1480, dtype=np.uint32).reshape(2, 1480).astype(np.uint8)
    flat, seq = F.as_flat(x), F.as_sequence(x)
    assert flat.dtype == np.float32 and flat.max() <= 1.0 and flat.min() >= 0.0
    assert seq.shape == (2, 40, 37)
    np.testing.assert_array_equal(seq.reshape(2, 1480), flat)


def test_int8_raw_bytes_equal_float_quantisation_bit_for_bit():
    """q = round(x/255 / (1/255)) - 128 == byte XOR 0x80, for every byte value."""
    x = np.arange(256, dtype=np.uint8).repeat(6)[:1480][None, :].repeat(2, 0)
    x[1] = np.random.default_rng(0).integers(0, 256, 1480, dtype=np.uint8)
    scale, zero = np.float32(1 / 255), -128
    q_float = np.clip(np.round(F.as_flat(x) / scale) + zero, -128, 127).astype(np.int8)
    np.testing.assert_array_equal(F.as_int8(x), q_float)
    np.testing.assert_array_equal(F.model_input(x, "sequence", np.int8), q_float.reshape(-1, 40, 37))


def test_training_and_daemon_share_the_feature_function():
    from daemon import pipeline
    from models import dataset
    assert dataset.payload_bytes is F.payload_bytes
    assert pipeline.payload_bytes is F.payload_bytes


def test_no_second_copy_of_the_feature_function():
    """Nothing outside daemon/features.py masks the first 20 bytes or defines payload_bytes."""
    offenders = []
    for top in ("daemon", "models", "bench"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(dirpath, name)
                if path.endswith(os.path.join("daemon", "features.py")):
                    continue
                tree = ast.parse(open(path).read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.FunctionDef) and node.name in ("payload_bytes", "as_flat", "as_int8"):
                        offenders.append(f"{path}: defines {node.name}")
                    if isinstance(node, ast.Constant) and node.value == 1480:
                        offenders.append(f"{path}:{node.lineno}: literal 1480")
    assert not offenders, offenders
