"""Shared by the live end-to-end tests: a network namespace holding one end of a veth pair.

The daemon captures on the root-namespace end (`a`); tcpreplay sends into the
namespaced end (`b`). Needs root, iproute2 and tcpreplay (`need()`: skipped on
a developer machine without them, a failure under CI=true).
"""
import os
import shutil
import subprocess

import pytest

from tests.daemon_proc import CORPUS, is_root, need


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def make_link(ns, a, b):
    sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
    sh("ip", "link", "set", b, "netns", ns)
    # no IPv6 autoconf chatter on either end, and room for the capture's largest frames
    sh("sysctl", "-qw", f"net.ipv6.conf.{a}.disable_ipv6=1", check=False)
    sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{b}.disable_ipv6=1", check=False)
    sh("ip", "link", "set", a, "mtu", "9000", "up")
    sh("ip", "netns", "exec", ns, "ip", "link", "set", b, "mtu", "9000", "up")


def rx_packets(interface) -> int:
    """Frames the kernel received on an interface (what a capture on it can at most see)."""
    with open(f"/sys/class/net/{interface}/statistics/rx_packets") as f:
        return int(f.read())


@pytest.fixture
def netns(tmp_path):
    need(is_root(), "needs root for network namespaces")
    need(shutil.which("ip") is not None and shutil.which("tcpreplay") is not None, "needs iproute2 and tcpreplay")
    need(os.path.isdir(CORPUS), f"needs the shared corpus at {CORPUS}")
    tag = f"tce{os.getpid() % 10000}"
    ns, a, b = tag + "ns", tag + "a", tag + "b"
    sh("ip", "netns", "add", ns)
    try:
        make_link(ns, a, b)
        yield ns, a, b
    finally:
        sh("ip", "link", "del", a, check=False)
        sh("ip", "netns", "del", ns, check=False)
