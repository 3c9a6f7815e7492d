"""A network namespace holding one end of a veth pair, for replaying traffic at the daemon.

The daemon captures on the root-namespace end (`a`); tcpreplay sends into the
namespaced end (`b`) with `ip netns exec NS tcpreplay -i B ...`. Shared by the
benchmarks (bench/live.py, bench/soak.py) and the end-to-end tests
(tests/e2e/conftest.py). Needs root and iproute2.
"""
from __future__ import annotations

import contextlib
import subprocess


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def make_link(ns, a, b, mtu=9000, ipv6=False):
    """The veth pair a <-> b, with b moved into the namespace ns (which must exist), both up.

    By default each end gets MTU 9000 (room for a capture's largest frames) and
    IPv6 disabled (no autoconf chatter on either end); mtu=None and ipv6=True
    leave the kernel's defaults. Does not create the namespace, so a caller can
    delete the link and make it again while the namespace stays."""
    sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
    sh("ip", "link", "set", b, "netns", ns)
    if not ipv6:
        sh("sysctl", "-qw", f"net.ipv6.conf.{a}.disable_ipv6=1", check=False)
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{b}.disable_ipv6=1", check=False)
    mtu_args = ("mtu", str(mtu)) if mtu else ()
    sh("ip", "link", "set", a, *mtu_args, "up")
    sh("ip", "netns", "exec", ns, "ip", "link", "set", b, *mtu_args, "up")


def remove(ns, a):
    """Delete the link a (its peer goes with it) and the namespace ns; whatever is already gone is skipped."""
    sh("ip", "link", "del", a, check=False)
    sh("ip", "netns", "del", ns, check=False)


@contextlib.contextmanager
def veth_netns(ns, a, b, **link):
    """Create the namespace ns and the pair a <-> b in it (make_link's keywords), yield, and always remove both.

    If the namespace cannot be created (it exists already, say), the error is
    raised and nothing is removed."""
    sh("ip", "netns", "add", ns)
    try:
        make_link(ns, a, b, **link)
        yield ns, a, b
    finally:
        remove(ns, a)


def rx_packets(interface) -> int:
    """Frames the kernel received on an interface (what a capture on it can at most see)."""
    with open(f"/sys/class/net/{interface}/statistics/rx_packets") as f:
        return int(f.read())
