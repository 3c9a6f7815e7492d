"""Acceptance: the daemon as the unit starts it, scraped by a real Prometheus, equals `classify`.

The daemon command line and environment come from tc-daemon.service
(ExecStart=, Environment=), with the venv's tc-daemon in place of the
installed /opt/tc-daemon one; its config is deploy/config.example.yaml with
only capture.interfaces, metrics.listen and pipeline.idle_timeout changed. A
real Prometheus (Debian's /usr/bin/prometheus) runs deploy/prometheus/prometheus.yml
with the target moved to the daemon's port and 1 s intervals, and the shipped
rule files loaded unchanged beside it. Three shared-corpus captures are
replayed into a veth end in a network namespace (the fixture of test_live.py);
once every flow has ended and Prometheus has scraped the final values, PromQL
per-class packet, byte and flow totals must equal `tc-daemon classify --output
flows` on the same captures, with up == 1 and zero drops.

Idle timeouts: as in test_live.py, the live daemon ends flows a few seconds
after the longest capture's replay could have lasted (no flow is split while
replaying), and `classify` keeps the default 120 s on capture timestamps. The
test checks first that the captures allow this: no flow pauses 120 s or lasts
1800 s in capture time, and no flow appears in two captures (live, the three
share one flow table; classify keeps each file apart).
Needs root, iproute2, tcpreplay and prometheus: under CI=true it must run.
"""
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections import Counter

import pytest
import yaml

from daemon.capture.pcapfile import PcapReader
from daemon.flows import ACTIVE_TIMEOUT, IDLE_TIMEOUT, flow_key
from daemon.packet import decode
from tests.daemon_proc import local_capture, EXE, ROOT, Daemon, by_label, classify_flows, free_port, need, per_class
from tests.e2e.test_live import RATE, replay

pytestmark = pytest.mark.e2e
CAPTURES = ("dropbox.pcap", "telegram.pcap", "whatsapp.pcap")
PROMETHEUS = "/usr/bin/prometheus"
INSTALLED = "/opt/tc-daemon/"  # install.sh's default prefix, as written in the unit


def unit_command(unit_path, config_path):
    """(argv after `tc-daemon`, environment) from the unit's ExecStart= and Environment= lines."""
    argv, env = None, {}
    with open(unit_path) as f:
        for line in f:
            key, _, value = line.strip().partition("=")
            if key == "ExecStart":
                argv = shlex.split(value.lstrip("-@:+!"))
            elif key == "Environment":
                env.update(item.split("=", 1) for item in shlex.split(value))
    assert argv, f"no ExecStart= in {unit_path}"
    exe = argv[0]
    if exe.startswith(INSTALLED):
        exe = EXE  # the venv's tc-daemon for the installed one
    assert os.path.basename(exe) == "tc-daemon" and os.path.samefile(exe, EXE), argv
    assert argv[1] == "run", argv
    for opt in ("--config", "-c"):
        if opt in argv:
            argv[argv.index(opt) + 1] = config_path
            break
    else:
        raise AssertionError(f"ExecStart= passes no --config: {argv}")
    return argv[2:], env


def capture_flows(paths):
    """Each capture's flows: max pause and duration (capture time), and the keys."""
    out = {}
    for path in paths:
        first, last, gap, frames = {}, {}, 0.0, 0
        with PcapReader(path) as r:
            for linktype, ts, frame in r:
                frames += 1
                d = decode(linktype, frame)
                if isinstance(d, int):
                    continue
                key, _ = flow_key(d[1], d[2], d[4], d[3], d[5])
                if key in last:
                    gap = max(gap, ts - last[key])
                first.setdefault(key, ts)
                last[key] = ts
        out[path] = dict(frames=frames, keys=set(first), pause=gap,
                         duration=max((last[k] - first[k] for k in first), default=0.0))
    return out


class Prometheus:
    """/usr/bin/prometheus on a free loopback port, storage and log in `workdir`."""

    def __init__(self, workdir, config_path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(workdir, "prometheus.log")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([PROMETHEUS, f"--config.file={config_path}",
                                      f"--storage.tsdb.path={os.path.join(workdir, 'prom-data')}",
                                      f"--web.listen-address=127.0.0.1:{self.port}"],
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def log(self):
        with open(self.log_path) as f:
            return f.read()[-4000:]

    def get(self, path, **params):
        url = f"{self.url}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        body = json.load(urllib.request.urlopen(url, timeout=5))
        assert body["status"] == "success", body
        return body["data"]

    def wait_ready(self, timeout=30.0):
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited {self.proc.returncode}: {self.log()}")
            try:
                if urllib.request.urlopen(f"{self.url}/-/ready", timeout=2).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready after {timeout} s: {self.log()}")

    def query(self, expr):
        """{label-value tuple (sorted label items, __name__ dropped): float} for an instant vector."""
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        return {tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__")): float(r["value"][1])
                for r in data["result"]}

    def by(self, expr, label):
        """{label value: float} for `sum by (label) (...)`, zeros left out."""
        return {dict(k)[label]: v for k, v in self.query(expr).items() if v}

    def scalar(self, expr):
        vals = self.query(expr)
        assert len(vals) == 1, f"{expr}: {vals}"
        return next(iter(vals.values()))

    def wait_for(self, predicate, timeout=20.0, what="condition"):
        end = time.time() + timeout
        last = None
        while time.time() < end:
            try:
                last = predicate()
                if last is True:
                    return
            except (AssertionError, OSError) as e:
                last = e
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what} in prometheus (last: {last}); log: {self.log()}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def prometheus_config(tmp_path, daemon_port):
    """deploy/prometheus/prometheus.yml with the daemon's port and 1 s intervals; rule files copied beside."""
    shipped = os.path.join(ROOT, "deploy", "prometheus")
    with open(os.path.join(shipped, "prometheus.yml")) as f:
        cfg = yaml.safe_load(f)
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "tc-daemon"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{daemon_port}"]}]
    for rules in cfg["rule_files"]:  # relative to the config file: unchanged copies beside it
        shutil.copyfile(os.path.join(shipped, rules), str(tmp_path / rules))
    path = str(tmp_path / "prometheus.yml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path, cfg


def daemon_config(tmp_path, interface, port, idle_timeout):
    """deploy/config.example.yaml, only the interface, listen port and idle timeout changed."""
    with open(os.path.join(ROOT, "deploy", "config.example.yaml")) as f:
        cfg = yaml.safe_load(f)
    cfg["capture"]["interfaces"] = [interface]
    cfg["metrics"]["listen"] = f"127.0.0.1:{port}"
    cfg["pipeline"]["idle_timeout"] = idle_timeout
    path = str(tmp_path / "config.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def test_prometheus_scrapes_what_classify_reports(netns, tmp_path):
    ns, a, b = netns
    need(os.access(PROMETHEUS, os.X_OK), f"needs {PROMETHEUS} (apt-get install prometheus)")
    paths = [local_capture(c) for c in CAPTURES]

    # the captures suit the comparison (see the module docstring)
    info = capture_flows(paths)
    for p, i in info.items():
        assert i["pause"] < IDLE_TIMEOUT and i["duration"] < ACTIVE_TIMEOUT, (p, i["pause"], i["duration"])
    keys = [i["keys"] for i in info.values()]
    assert sum(map(len, keys)) == len(set().union(*keys)), "a flow appears in two captures"
    frames = sum(i["frames"] for i in info.values())

    rows = classify_flows(*paths)
    packets, nbytes = per_class(rows), per_class(rows, "bytes")
    flows = Counter(row["class"] for row in rows)
    assert len(packets) >= 3, f"want several classes, classify gives {dict(packets)}"

    # the daemon, as the unit starts it
    port = free_port()
    idle = max(i["frames"] for i in info.values()) // RATE + 3
    args, env = unit_command(os.path.join(ROOT, "tc-daemon.service"), daemon_config(tmp_path, a, port, idle))
    d = Daemon(args, port, env=env, log_path=str(tmp_path / "daemon.log"))
    prom = None
    try:
        d.wait_ready()
        d.wait_for(lambda v: v.get(f'tc_daemon_capture_up{{interface="{a}"}}') == 1, what="capture up")
        prom_cfg, cfg = prometheus_config(tmp_path, port)
        prom = Prometheus(str(tmp_path), prom_cfg)
        prom.wait_ready()
        prom.wait_for(lambda: prom.scalar('up{job="tc-daemon"}') == 1, what="first scrape of the daemon")

        for p in paths:
            replay(ns, b, p)
        captured = f'tc_daemon_captured_packets_total{{interface="{a}"}}'
        d.wait_for(lambda v: v[captured] >= frames and v["tc_daemon_flow_table_entries"] == 0
                   and sum(by_label(v, "tc_daemon_flows_total", "class").values()) >= len(rows),
                   timeout=idle + 30, what="every frame captured and every flow decided")
        time.sleep(0.5)  # anything still in flight lands before the scrape we wait for

        # Prometheus has scraped the final values: its last scrape is after they were reached
        t_final = time.time()
        prom.wait_for(lambda: prom.scalar('timestamp(up{job="tc-daemon"})') > t_final + 0.1 or "not yet",
                      what="a scrape after the flows ended")

        assert prom.scalar('up{job="tc-daemon"}') == 1
        assert prom.by("sum by (class) (tc_daemon_packets_total)", "class") == dict(packets)
        assert prom.by("sum by (class) (tc_daemon_bytes_total)", "class") == dict(nbytes)
        assert prom.by("sum by (class) (tc_daemon_flows_total)", "class") == dict(flows)
        # both directions exist, and together they are the whole
        direction = prom.by("sum by (direction) (tc_daemon_packets_total)", "direction")
        assert set(direction) == {"c2s", "s2c"} and sum(direction.values()) == sum(packets.values())
        assert prom.scalar(f'sum(tc_daemon_captured_packets_total{{interface="{a}"}})') == frames
        assert prom.scalar("sum(tc_daemon_dropped_packets_total)") == 0
        assert prom.scalar("sum(tc_daemon_kernel_drops_total)") == 0
        assert prom.scalar("tc_daemon_capture_up") == 1
        assert prom.scalar("tc_daemon_last_reload_success") == 1

        # the shipped rule files loaded unchanged; every rule evaluates without error
        groups = prom.get("/api/v1/rules")["groups"]
        shipped = set()
        for rules in cfg["rule_files"]:
            with open(os.path.join(ROOT, "deploy", "prometheus", rules)) as f:
                shipped |= {g["name"] for g in yaml.safe_load(f)["groups"]}
        assert {g["name"] for g in groups} == shipped

        # ... on the real series: wait for a recording run after traffic (the group runs every 30 s)
        prom.wait_for(lambda: prom.query("sum(class:tc_daemon_packets:rate5m) > 0") != {} or "not yet",
                      timeout=65, what="class:tc_daemon_packets:rate5m over the replayed traffic")
        rules = [r for g in prom.get("/api/v1/rules")["groups"] for r in g["rules"]]
        assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
        # a series per class (a class replayed after the last run has rate 0 there, still a series)
        assert set(packets) <= {dict(k)["class"] for k in prom.query("class:tc_daemon_packets:rate5m")}
        assert abs(prom.scalar("sum(class:tc_daemon_packets:share5m)") - 1) < 1e-9
    finally:
        if prom is not None:
            prom.stop()
            shutil.rmtree(str(tmp_path / "prom-data"), ignore_errors=True)
        assert d.stop() == 0, d.log()
