"""`tc-daemon run` as a process: sd_notify over a real socket, reloads, errors at start, overload, /metrics."""
import base64
import gc
import hashlib
import os
import platform
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import weakref

import pytest

from daemon import metrics as M
from daemon import service
from tests.daemon_proc import (ROOT, SAMPLES, Daemon, by_label, copy_models, error_lines, free_port, run_cli, total,
                               write_config)

WHATSAPP = os.path.join(SAMPLES, "whatsapp.pcap")
DROPBOX = os.path.join(SAMPLES, "dropbox.pcap")


def config(tmp_path, port, extra=""):
    return write_config(str(tmp_path / "config.yaml"), f"metrics:\n  listen: 127.0.0.1:{port}\n" + extra)


class NotifySocket:
    def __init__(self, address):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self.messages = []

    def until(self, predicate, timeout=20.0):
        end = time.time() + timeout
        while time.time() < end:
            for m in self.messages:
                if predicate(m):
                    return m
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                pass
        raise AssertionError(f"no such notification in {self.messages}")

    def close(self):
        self.sock.close()


def test_notifier_abstract_socket():
    name = f"tc-daemon-test-{os.getpid()}"
    ns = NotifySocket("\0" + name)
    try:
        n = service.Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.notify("READY=1\nSTATUS=hello")
        assert ns.until(lambda m: m == "READY=1\nSTATUS=hello", 2)
    finally:
        ns.close()
    assert not service.Notifier({}).notify("READY=1")


def test_watchdog_interval():
    assert service.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert service.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert service.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert service.watchdog_interval({}) is None


def test_notify_protocol_and_reload_cycle(tmp_path):
    """READY, STATUS, WATCHDOG over a real datagram socket; SIGHUP with a good model, then a corrupt one."""
    models = str(tmp_path / "models")
    entry = copy_models(models)
    port = free_port()
    cfg = config(tmp_path, port, "capture:\n  replay_speed: 0\npipeline:\n  idle_timeout: 1\n")
    ns = NotifySocket(str(tmp_path / "notify.sock"))
    d = Daemon(["-c", cfg, "--pcap", WHATSAPP], port,
               env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000",
                    "TC_DAEMON_MODELS_DIR": models})
    try:
        ready = ns.until(lambda m: m.startswith("READY=1"))
        assert "STATUS=" in ready and entry["name"] in ready
        ns.until(lambda m: m == "WATCHDOG=1")
        vals = d.wait_for(lambda v: total(v, "tc_daemon_packets_total") == 679, what="all packets counted")
        assert vals["tc_daemon_last_reload_success"] == 1
        ns.until(lambda m: m.startswith("STATUS=") and "679 packets classified" in m)
        t0 = vals["tc_daemon_last_reload_timestamp_seconds"]

        ns.messages.clear()
        d.proc.send_signal(signal.SIGHUP)
        ns.until(lambda m: m.startswith("RELOADING=1\nMONOTONIC_USEC="))
        ns.until(lambda m: m.startswith("READY=1"))
        vals = d.wait_for(lambda v: v["tc_daemon_last_reload_timestamp_seconds"] > t0, what="reload")
        assert vals["tc_daemon_last_reload_success"] == 1
        assert "reloaded: model " + entry["name"] in d.log()

        with open(os.path.join(models, entry["file"]), "wb") as f:
            f.write(os.urandom(entry["bytes"]))
        d.proc.send_signal(signal.SIGHUP)
        vals = d.wait_for(lambda v: v["tc_daemon_last_reload_success"] == 0, what="failed reload")
        assert d.proc.poll() is None
        assert "reload failed; still running the previous config and model" in d.log()
        assert "sha256" in d.log()
        # the old model still classifies
        assert total(vals, "tc_daemon_packets_total") == 679
        ns.messages.clear()
        ns.until(lambda m: m == "WATCHDOG=1")
        assert d.stop() == 0
        ns.until(lambda m: m == "STOPPING=1")
    finally:
        d.stop()
        ns.close()


def test_missing_model(tmp_path):
    empty = tmp_path / "nomodels"
    empty.mkdir()
    r = run_cli("run", "--pcap", WHATSAPP, "--listen", f"127.0.0.1:{free_port()}",
                env={"TC_DAEMON_MODELS_DIR": str(empty)})
    lines = error_lines(r.stderr)
    assert r.returncode == 1 and len(lines) == 1 and "manifest" in lines[0], r.stderr


def test_corrupt_model_at_start(tmp_path):
    models = str(tmp_path / "models")
    entry = copy_models(models)
    with open(os.path.join(models, entry["file"]), "r+b") as f:
        f.seek(100)
        f.write(b"\xff" * 64)
    r = run_cli("run", "--pcap", WHATSAPP, "--listen", f"127.0.0.1:{free_port()}",
                env={"TC_DAEMON_MODELS_DIR": models})
    lines = error_lines(r.stderr)
    assert r.returncode == 1 and len(lines) == 1 and "sha256" in lines[0], r.stderr
    r = run_cli("run", "--pcap", WHATSAPP, "--model", "no-such-model", env={"TC_DAEMON_MODELS_DIR": models})
    assert r.returncode == 1 and "no-such-model" in r.stderr and "Traceback" not in r.stderr


def test_metrics_port_taken(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run_cli("run", "--pcap", WHATSAPP, "--listen", f"127.0.0.1:{port}")
    lines = error_lines(r.stderr)
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert f"metrics: cannot listen on 127.0.0.1:{port}" in lines[0] and "in use" in lines[0]


def test_unreadable_replay_capture(tmp_path):
    r = run_cli("run", "--pcap", str(tmp_path / "nope.pcap"), "--listen", f"127.0.0.1:{free_port()}")
    assert r.returncode == 1 and "nope.pcap" in r.stderr and "Traceback" not in r.stderr


def test_overloaded_classifier(tmp_path):
    """A queue of 2 at full replay speed: drops counted by reason, all packets still counted, daemon alive.
    Packet mode, where the model has its own thread (in flow mode the capture thread runs the model
    itself, and a capture that falls behind shows as kernel drops instead)."""
    port = free_port()
    cfg = config(tmp_path, port, "capture:\n  replay_speed: 0\npipeline:\n  mode: packet\n  queue_packets: 2\n"
                                 "  batch_size: 1\n  batch_timeout_ms: 0\n  idle_timeout: 1\n")
    d = Daemon(["-c", cfg, "--pcap", DROPBOX], port)
    try:
        d.wait_ready()
        vals = d.wait_for(lambda v: total(v, "tc_daemon_packets_total") == 848, what="all packets counted")
        drops = by_label(vals, "tc_daemon_dropped_packets_total", "reason")
        assert drops["queue_full"] > 0 and set(drops) == set(M.DROP_REASONS)
        assert vals['tc_daemon_captured_packets_total{interface="replay"}'] == 848
        assert vals["tc_daemon_flow_table_entries"] == 0
        rss = int(next(l.split()[1] for l in open(f"/proc/{d.proc.pid}/status") if l.startswith("VmRSS:")))
        assert rss < 400 * 1024, f"RSS {rss} KiB"
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0


def test_series_exist_from_the_start(tmp_path):
    port = free_port()
    d = Daemon(["-c", config(tmp_path, port, "capture:\n  replay_speed: 1\n"), "--pcap", WHATSAPP], port)
    try:
        vals = d.wait_ready()
        for name in ("tc_daemon_packets_total", "tc_daemon_bytes_total"):
            classes = by_label(vals, name, "class")
            assert "other" in classes and len(classes) >= 3
            assert set(by_label(vals, name, "direction")) == {"c2s", "s2c"}
        assert set(by_label(vals, "tc_daemon_skipped_packets_total", "reason")) >= {"not_ip", "truncated"}
        for name in ("tc_daemon_kernel_drops_total", "tc_daemon_captured_packets_total",
                     "tc_daemon_capture_reopens_total", "tc_daemon_capture_up"):
            assert f'{name}{{interface="replay"}}' in vals, name
        for name in ("tc_daemon_decision_latency_seconds_bucket", "tc_daemon_inference_latency_seconds_bucket",
                     "tc_daemon_batch_size_bucket"):
            assert any(k.startswith(name) for k in vals), name
        assert any(k.startswith("tc_daemon_model_info{") for k in vals)
        assert any(k.startswith("tc_daemon_build_info{version=") for k in vals)
        assert "tc_daemon_flow_table_entries" in vals
        assert not any(k.endswith("_created") or "_created{" in k for k in vals)
    finally:
        d.stop()


def test_metrics_tls_and_basic_auth(tmp_path):
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
    ctx = ssl.create_default_context(cafile=cert)
    ctx.check_hostname = False
    port = free_port()
    server = M.serve("127.0.0.1", port, cert, key, "prom", hashlib.sha256(b"s3cret").hexdigest())
    try:
        url = f"https://127.0.0.1:{port}/metrics"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url, context=ctx, timeout=5)
        assert e.value.code == 401
        auth = lambda pw: {"Authorization": "Basic " + base64.b64encode(b"prom:" + pw).decode()}  # noqa: E731
        req = urllib.request.Request(url, headers=auth(b"wrong"))
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(req, context=ctx, timeout=5)
        req = urllib.request.Request(url, headers=auth(b"s3cret"))
        body = urllib.request.urlopen(req, context=ctx, timeout=5).read().decode()
        assert "tc_daemon_build_info" in body
    finally:
        server.shutdown()
    port = free_port()
    server = M.serve("127.0.0.1", port, cert, key)  # prometheus_client's own TLS server
    try:
        body = urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=ctx, timeout=5).read().decode()
        assert "tc_daemon_build_info" in body
    finally:
        server.shutdown()


def test_gc_schedule_still_collects_cycles():
    """The daemon runs the cyclic collector from its main loop (service._GcSchedule): startup objects
    frozen, automatic collection off, and a cycle made after that is still freed by the next step."""
    sched = service._GcSchedule()
    try:
        assert not gc.isenabled() and gc.get_freeze_count() > 0

        class Node:
            pass
        a = Node()
        a.me = a
        ref = weakref.ref(a)
        del a
        assert ref() is not None  # nothing collects on its own now
        sched.step(time.monotonic())
        assert ref() is None
    finally:
        gc.unfreeze()
        gc.enable()


def test_scrape_of_a_non_http_answer_is_an_oserror():
    """A connection to a port nobody listens on yet can meet itself and read its own request back;
    scrape calls that a ConnectionError, which every wait loop retries, not an HTTP crash."""
    from tests.daemon_proc import scrape
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def echo():
        c, _ = srv.accept()
        c.sendall(c.recv(4096))  # what a self-connected socket reads: the request itself
        c.close()
    t = threading.Thread(target=echo, daemon=True)
    t.start()
    with pytest.raises(ConnectionError, match="no HTTP answer"):
        scrape(f"http://127.0.0.1:{srv.getsockname()[1]}/metrics")
    t.join(5)
    srv.close()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's heap settings; musl has neither the behaviour nor the setting")
def test_a_full_flow_table_turning_over_holds_its_memory():
    """The flow table's memory, once full, stays put while flows come and go (months on a gateway): with
    tune_malloc as the daemon starts, RSS does not grow from 131k flows seen to 600k; without it (the
    control, glibc's default), the table's freed hash tables leave holes on the heap and it grows."""
    def growth(*flags):  # python -m bench.heapchurn: one bare packet per flow through the default table
        r = subprocess.run([sys.executable, "-m", "bench.heapchurn", "600000", *flags], capture_output=True,
                           text=True, timeout=300, cwd=ROOT)
        assert r.returncode == 0, r.stderr[-2000:]
        return int(r.stdout.split()[-1])
    tuned, plain = growth(), growth("--plain")
    assert tuned < 1 << 20, tuned / 2**20
    assert plain > 3 << 20, plain / 2**20  # the control: the settings are what holds it
