"""Shared by the live end-to-end tests: a network namespace holding one end of a veth pair.

The daemon captures on the root-namespace end (`a`); tcpreplay sends into the
namespaced end (`b`). Needs root, iproute2 and tcpreplay (`need()`: skipped on
a developer machine without them, a failure under CI=true). The namespace and
link helpers live in bench/netns.py (the benchmarks use them too); `sh`,
`make_link` and `rx_packets` stay importable from here.
"""
import os
import shutil

import pytest

from bench.netns import veth_netns
from tests.daemon_proc import is_root, need


@pytest.fixture
def netns(tmp_path):
    need(is_root(), "needs root for network namespaces")
    need(shutil.which("ip") is not None and shutil.which("tcpreplay") is not None, "needs iproute2 and tcpreplay")
    tag = f"tce{os.getpid() % 10000}"
    with veth_netns(tag + "ns", tag + "a", tag + "b") as link:
        yield link
