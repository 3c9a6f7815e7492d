"""Faults on a live interface: link down and up, a model replaced by garbage then SIGHUP, and no disk
writes per packet.

Covered elsewhere (docs/reliability.md lists them): the interface deleted and
recreated (test_live.py), a corrupt model at start and on SIGHUP (test_service.py:
exit 1 / last_reload_success 0), bad config types and unknown keys (test_config.py:
exit 78, one line), the metrics port taken (test_service.py: exit 1, one line).
"""
import json
import os
import re
import signal
import stat
import time
from collections import Counter

import pytest

from tests.daemon_proc import (local_capture, Daemon, by_label, copy_models, free_port, run_cli, total,
                               write_config)
from bench.netns import rx_packets, sh

pytestmark = pytest.mark.e2e
TELEGRAM = local_capture("telegram.pcap")  # 1566 frames, Ethernet


def start(tmp_path, a, extra="", env=None, cwd=None, idle_timeout=2):
    port = free_port()
    cfg = write_config(str(tmp_path / "config.yaml"),
                       f"capture:\n  interfaces: [{a}]\n  ignore_outgoing: true\n"
                       f"pipeline:\n  idle_timeout: {idle_timeout}\n{extra}metrics:\n  listen: 127.0.0.1:{port}\n")
    old = os.getcwd()
    os.chdir(cwd or old)  # the daemon starts in `cwd` (Popen inherits it)
    try:
        d = Daemon(["-c", cfg], port, env=env, log_path=str(tmp_path / "daemon.log"))
    finally:
        os.chdir(old)
    d.wait_ready()
    d.wait_for(lambda v: v.get(f'tc_daemon_capture_up{{interface="{a}"}}') == 1, what="capture up")
    return d


def replay(ns, b, path, rate):
    r = sh("ip", "netns", "exec", ns, "tcpreplay", "-q", "-i", b, f"--pps={rate}", path)
    return int(re.search(r"Actual: (\d+) packets", r.stdout).group(1))


def classes(vals):
    return {c: n for c, n in by_label(vals, "tc_daemon_packets_total", "class").items() if n}


def test_interface_down_and_up(netns, tmp_path):
    """`ip link set down`, not deleted: capture_up 0, one log line, reopened when up, traffic counted again."""
    ns, a, b = netns
    d = start(tmp_path, a)
    up = f'tc_daemon_capture_up{{interface="{a}"}}'
    captured = f'tc_daemon_captured_packets_total{{interface="{a}"}}'
    try:
        sh("ip", "link", "set", a, "down")
        d.wait_for(lambda v: v[up] == 0, what="capture_up 0")
        assert d.proc.poll() is None
        sh("ip", "link", "set", a, "up")
        vals = d.wait_for(lambda v: v[up] == 1, what="capture reopened")
        assert vals[f'tc_daemon_capture_reopens_total{{interface="{a}"}}'] == 1
        assert d.log().count(f"capture on {a} lost") == 1
        n = replay(ns, b, TELEGRAM, 1000)
        vals = d.wait_for(lambda v: v[captured] >= n and v["tc_daemon_flow_table_entries"] == 0,
                          what="capture after the link came back")
        assert vals[captured] == n and total(vals, "tc_daemon_packets_total") == n
        assert total(vals, "tc_daemon_dropped_packets_total") == 0
    finally:
        assert d.stop() == 0


def test_garbage_model_then_sighup_keeps_the_old_model(netns, tmp_path):
    """The model file overwritten with garbage, then SIGHUP: the reload fails, says why, and the old model
    goes on deciding new traffic exactly as before (same classes as `classify` with that model)."""
    ns, a, b = netns
    models = str(tmp_path / "models")
    entry = copy_models(models)
    env = {"TC_DAEMON_MODELS_DIR": models}
    r = run_cli("classify", TELEGRAM, "--output", "summary", "--format", "jsonl", env=env)
    assert r.returncode == 0, r.stderr
    expected = {row["class"]: row["packets"] for row in map(json.loads, r.stdout.splitlines()) if row["packets"]}
    n = sum(expected.values())
    d = start(tmp_path, a, env=env, idle_timeout=8)
    try:
        replay(ns, b, TELEGRAM, 500)
        first = d.wait_for(lambda v: v["tc_daemon_flow_table_entries"] == 0 and total(v, "tc_daemon_packets_total")
                           >= n, timeout=40, what="first replay decided")
        assert classes(first) == expected
        info = {k for k, v in first.items() if k.startswith("tc_daemon_model_info{") and v == 1}

        with open(os.path.join(models, entry["file"]), "wb") as f:
            f.write(os.urandom(entry["bytes"]))
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for(lambda v: v["tc_daemon_last_reload_success"] == 0, what="the failed reload")
        assert "reload failed; still running the previous config and model" in d.log()

        replay(ns, b, TELEGRAM, 500)
        second = d.wait_for(lambda v: v["tc_daemon_flow_table_entries"] == 0 and total(v, "tc_daemon_packets_total")
                            >= 2 * n, timeout=40, what="second replay decided")
        got = Counter(classes(second))
        got.subtract(classes(first))
        assert {c: k for c, k in got.items() if k} == expected  # the same decisions: the old model is running
        assert {k for k, v in second.items() if k.startswith("tc_daemon_model_info{") and v == 1} == info
        assert total(second, "tc_daemon_dropped_packets_total") == 0  # no model_error: no garbage was loaded
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0


def _io(pid):
    with open(f"/proc/{pid}/io") as f:
        return {k: int(v) for k, v in (line.split(": ") for line in f)}


def _writable_files(pid):
    """Regular files the process holds open for writing: fd -> path."""
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            path = os.readlink(f"/proc/{pid}/fd/{fd}")
            if not stat.S_ISREG(os.stat(f"/proc/{pid}/fd/{fd}").st_mode):
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                flags = int(next(line.split()[1] for line in f if line.startswith("flags:")), 8)
        except (OSError, StopIteration):
            continue  # closed meanwhile
        if flags & (os.O_WRONLY | os.O_RDWR):
            out[int(fd)] = path
    return out


@pytest.mark.parametrize("mode", ["flow", "packet"])
def test_nothing_written_to_disk_per_packet(netns, tmp_path, mode):
    """Thousands of packets go by, and the daemon makes not one write() to any file.

    Measured from /proc/PID/io between two points with no /metrics scrape and no
    log line expected in between: `syscw`/`wchar` count every write(2)/writev(2)/
    pwrite(2) (files, pipes, stderr, but not the send(2) of the metrics server), and
    `write_bytes` what reached the storage layer; all three must stay unchanged
    while the daemon captures, classifies and ends flows. The only regular file
    open for writing is its stderr (the test's log file), its working directory,
    HOME and TMPDIR are an empty folder, and it stays empty. A control at the end
    shows the counters do move for a single log line.
    """
    ns, a, b = netns
    empty = tmp_path / "cwd"
    empty.mkdir()
    env = {"HOME": str(empty), "TMPDIR": str(empty)}
    d = start(tmp_path, a, extra=f"  mode: {mode}\n", env=env, cwd=str(empty))
    captured = f'tc_daemon_captured_packets_total{{interface="{a}"}}'
    try:
        log_path = d.log_path
        assert set(_writable_files(d.proc.pid).values()) == {log_path}, _writable_files(d.proc.pid)
        time.sleep(1)  # let the start settle: no scrape from here until the second reading
        rx0 = rx_packets(a)
        io0 = _io(d.proc.pid)
        sent = replay(ns, b, TELEGRAM, 2000) + replay(ns, b, local_capture("dropbox.pcap"), 2000)
        # every frame arrived, then the idle timeout (2 s) ends the flows and they are decided and counted
        while rx_packets(a) - rx0 < sent:
            time.sleep(0.2)
        time.sleep(4)
        io1 = _io(d.proc.pid)
        vals = d.metrics()
        assert vals[captured] == sent and vals["tc_daemon_flow_table_entries"] == 0, "not all done before io1"
        assert total(vals, "tc_daemon_packets_total") == sent
        assert {k: io1[k] - io0[k] for k in ("syscw", "wchar", "write_bytes")} == \
            {"syscw": 0, "wchar": 0, "write_bytes": 0}, (io0, io1)
        assert set(_writable_files(d.proc.pid).values()) == {log_path}
        assert os.listdir(empty) == []
        # the control: one log line (a SIGHUP reload says so on stderr) does show up in these counters
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for(lambda v: v["tc_daemon_last_reload_timestamp_seconds"] > vals[
            "tc_daemon_last_reload_timestamp_seconds"], what="reload")
        while "reloaded: model" not in d.log():
            time.sleep(0.1)
        io2 = _io(d.proc.pid)
        assert io2["syscw"] > io1["syscw"] and io2["wchar"] > io1["wchar"], (io1, io2)
    finally:
        assert d.stop() == 0
    assert os.listdir(empty) == []
