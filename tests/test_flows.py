"""Flow keys: one bytes object per flow, direction-free, unpacked back to the 5-tuple."""
import socket

from daemon.flows import Flow, flow_key, key_fields

A4, B4 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
A6, B6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1"), socket.inet_pton(socket.AF_INET6, "2001:db8::2")


def test_both_directions_share_a_key():
    for a, b in ((A4, B4), (A6, B6)):
        k1, r1 = flow_key(6, a, 40000, b, 443)
        k2, r2 = flow_key(6, b, 443, a, 40000)
        assert k1 == k2 and isinstance(k1, bytes) and (r1, r2) == (False, True)
        assert key_fields(k1) == (6, a, 40000, b, 443)  # lower endpoint first


def test_the_port_breaks_a_tie_of_addresses():
    k, rev = flow_key(17, A4, 5353, A4, 53)
    assert rev and key_fields(k) == (17, A4, 53, A4, 5353)


def test_portless_and_protocol_apart():
    assert flow_key(1, A4, 0, B4, 0)[0] != flow_key(58, A4, 0, B4, 0)[0]
    assert key_fields(flow_key(1, A4, 0, B4, 0)[0]) == (1, A4, 0, B4, 0)


def test_flow_reads_its_client_side_from_the_key():
    key, rev = flow_key(6, B6, 51000, A6, 443)  # the client has the higher address
    f = Flow(0, 1.0, key, rev)
    assert (f.proto, f.src, f.sport, f.dst, f.dport) == (6, B6, 51000, A6, 443)


def test_flow_keys_at_once_equal_flow_key():
    """flow_keys (numpy, many packets) gives flow_key's bytes and direction, IPv4 and IPv6, equal
    endpoints and ports that differ only in the low byte included."""
    import numpy as np
    from daemon.flows import flow_keys
    rng = np.random.default_rng(7)
    for a in (4, 16):
        n = 500
        src = rng.integers(0, 3, (n, a), dtype=np.uint8)  # few values: many ties decided late in the row
        dst = rng.integers(0, 3, (n, a), dtype=np.uint8)
        sport, dport = rng.integers(0, 3, n) * 256 + rng.integers(0, 3, n), rng.integers(0, 3, n) * 257
        src[:20], sport[:20] = dst[:20], dport[:20]  # the same endpoint both sides
        proto = rng.choice([6, 17, 1], n)
        keys, rev = flow_keys(proto, src, sport, dst, dport)
        for i in range(n):
            k, r = flow_key(int(proto[i]), src[i].tobytes(), int(sport[i]), dst[i].tobytes(), int(dport[i]))
            assert (keys[i].tobytes(), bool(rev[i])) == (k, r)
