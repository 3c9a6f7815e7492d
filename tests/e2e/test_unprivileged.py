"""Least privilege: `tc-daemon run` as an unprivileged user holding only CAP_NET_RAW.

The unit runs the daemon as a DynamicUser with AmbientCapabilities= and
CapabilityBoundingSet= both CAP_NET_RAW and NoNewPrivileges=yes. Here setpriv
does the same for the user nobody (group nogroup, no supplementary groups):
the daemon captures on a veth end (the fixture of test_live.py), a capture is
replayed into the other end, and /metrics must show every frame captured and
classified as `classify` does. Without CAP_NET_RAW the same command must exit
non-zero with one clear error line and no traceback.

The user must be able to run the venv's interpreter and read the package and
the models (checked first, with a clear message). This dev venv's base
interpreter is pyenv's under /root (mode 0700, pyvenv.cfg home=): setpriv still
holds root's capabilities when it execs, so the path lookup reaches the binary,
but the process then cannot read /root, so the dynamic loader takes the
system's libpython of the same minor version (/usr/lib/x86_64-linux-gnu) and
Python its standard library (/usr/lib/python3.11). The daemon then runs on a
different Python build than the other tests: the test warns when so. (A shell
or `env` between setpriv and the daemon would get EACCES.) An installed venv
(deploy/install.sh: system python3, umask 022) has no such issue. The test
chmods nothing but the temporary directory it creates for the config.
Needs root (to create the veth pair and switch user), iproute2, tcpreplay and
setpriv (util-linux): under CI=true it must run.
"""
import grp
import os
import pathlib
import pwd
import shutil
import subprocess
import sys
import tempfile
import warnings

import pytest

from tests.daemon_proc import (local_capture, EXE, Daemon, by_label, classify_flows, error_lines, free_port, models_dir,
                               need, per_class, total)
from tests.e2e.test_live import RATE, replay
from tests.e2e.test_prometheus import daemon_config

pytestmark = pytest.mark.e2e
USER, GROUP = "nobody", "nogroup"
CAP_NET_RAW = 1 << 13


def as_user(net_raw: bool):
    """setpriv: USER/GROUP, no supplementary groups, no new privileges, and CAP_NET_RAW only or nothing."""
    caps = ["--inh-caps=-all,+net_raw", "--ambient-caps=-all,+net_raw", "--bounding-set=-all,+net_raw"] \
        if net_raw else ["--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all"]
    return [shutil.which("setpriv"), f"--reuid={USER}", f"--regid={GROUP}", "--clear-groups", "--no-new-privs",
            *caps]


def proc_status(pid):
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


@pytest.fixture
def user_can_run(netns):
    need(shutil.which("setpriv") is not None, "needs setpriv (util-linux)")
    try:
        pwd.getpwnam(USER), grp.getgrnam(GROUP)
    except KeyError:
        need(False, f"needs the user {USER} and the group {GROUP}")
    probe = ("import sys, daemon.service, daemon.classifier; from daemon import registry; "
             "registry.load_manifest(sys.argv[1]); print(sys.version)")
    r = subprocess.run([*as_user(False), sys.executable, "-c", probe, models_dir()], capture_output=True, text=True,
                       cwd="/", env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    need(r.returncode == 0, f"{USER} cannot run {sys.executable} with the package and read the models in "
                            f"{models_dir()}: the venv, its base interpreter (pyvenv.cfg home), the source tree "
                            f"and the models must be readable (and directories searchable) by {USER}: "
                            f"{r.stderr.strip()[-500:]}")
    if r.stdout.strip() != sys.version:
        warnings.warn(f"as {USER}, {sys.executable} runs Python {r.stdout.strip()!r}, not {sys.version!r}: "
                      "its base interpreter is not reachable for that user (see the module docstring)")
    return netns


@pytest.fixture
def user_dir():
    """A directory the user can read (pytest's tmp_path is under a 0700 /tmp/pytest-of-root)."""
    path = tempfile.mkdtemp(prefix="tc-daemon-unpriv-")
    os.chmod(path, 0o755)
    try:
        yield pathlib.Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_capture_with_only_cap_net_raw(user_can_run, user_dir, tmp_path):
    ns, a, b = user_can_run
    path = local_capture("dropbox.pcap")
    expected = per_class(classify_flows(path))
    frames = 848

    port = free_port()
    cfg = daemon_config(user_dir, a, port, frames // RATE + 3)
    d = Daemon(["--config", cfg], port, env={"PYTHONDONTWRITEBYTECODE": "1"}, prefix=as_user(True),
               log_path=str(tmp_path / "daemon.log"))
    try:
        d.wait_ready()
        st = proc_status(d.proc.pid)
        assert st["Uid"].split() == [str(pwd.getpwnam(USER).pw_uid)] * 4, st["Uid"]
        assert st["Groups"].strip() == ""
        for cap in ("CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(st[cap], 16) == CAP_NET_RAW, (cap, st[cap])
        assert st["NoNewPrivs"] == "1"
        up = f'tc_daemon_capture_up{{interface="{a}"}}'
        d.wait_for(lambda v: v.get(up) == 1, what="capture up")

        replay(ns, b, path)
        captured = f'tc_daemon_captured_packets_total{{interface="{a}"}}'
        vals = d.wait_for(lambda v: v[captured] >= frames and v["tc_daemon_flow_table_entries"] == 0
                          and total(v, "tc_daemon_packets_total") >= sum(expected.values()),
                          timeout=30, what="every frame captured and every flow decided")
        assert vals[captured] == frames
        assert vals[f'tc_daemon_kernel_drops_total{{interface="{a}"}}'] == 0
        assert total(vals, "tc_daemon_dropped_packets_total") == 0
        assert {c: n for c, n in by_label(vals, "tc_daemon_packets_total", "class").items() if n} == dict(expected)
        assert d.proc.poll() is None
    finally:
        rc = d.stop()
    assert rc == 0, d.log()
    assert "Traceback" not in d.log()


def test_without_cap_net_raw_one_line_error(user_can_run, user_dir):
    ns, a, b = user_can_run
    cfg = daemon_config(user_dir, a, free_port(), 5)
    r = subprocess.run([*as_user(False), EXE, "run", "--config", cfg], capture_output=True, text=True, timeout=120,
                       cwd="/", env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1", TC_DAEMON_MODELS_DIR=models_dir()))
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    assert error_lines(r.stderr) == [f"tc-daemon: error: capture on {a}: operation not permitted "
                                     "(needs CAP_NET_RAW)"], r.stderr
