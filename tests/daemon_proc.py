"""Helpers for tests that start `tc-daemon run` as a real process and read its /metrics."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from daemon import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(ROOT, "daemon", "data")
CORPUS = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "ndpi-pcaps", "pcap"))
EXE = shutil.which("tc-daemon", path=os.path.dirname(sys.executable)) or shutil.which("tc-daemon")


def models_dir() -> str:
    """The models the tests run: TC_DAEMON_MODELS_DIR if set, else the shipped ones."""
    return os.environ.get("TC_DAEMON_MODELS_DIR") or registry.SHIPPED_DIR


def need(condition: bool, why: str):
    """Skip when a test's requirement is missing, but fail under CI (CI=true): there they must run."""
    if not condition:
        if os.environ.get("CI") == "true":
            pytest.fail(f"required under CI: {why}")
        pytest.skip(why)


def is_root() -> bool:
    return os.geteuid() == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_models(dest: str, name: str = None) -> dict:
    """A private models folder holding one model (default: the one the registry chooses) and its manifest."""
    src = models_dir()
    m = registry.load_manifest(src)
    entry = next(e for e in m["models"] if e["name"] == name) if name else registry.choose(m["models"])
    os.makedirs(dest, exist_ok=True)
    shutil.copyfile(os.path.join(src, entry["file"]), os.path.join(dest, entry["file"]))
    with open(os.path.join(dest, registry.MANIFEST), "w") as f:
        json.dump(dict(m, models=[entry]), f)
    return entry


def write_config(path: str, text: str) -> str:
    with open(path, "w") as f:
        f.write(text)
    return path


def scrape(url: str, timeout: float = 5.0) -> dict:
    """{'name{labels}': value} from a Prometheus text page."""
    text = urllib.request.urlopen(url, timeout=timeout).read().decode()
    vals = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m:
            vals[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return vals


def by_label(vals: dict, name: str, label: str) -> dict:
    out = {}
    for k, v in vals.items():
        if k.startswith(name + "{"):
            m = re.search(label + r'="([^"]*)"', k)
            if m:
                out[m.group(1)] = out.get(m.group(1), 0) + v
    return out


def total(vals: dict, name: str) -> float:
    return sum(v for k, v in vals.items() if k == name or k.startswith(name + "{"))


class Daemon:
    """`tc-daemon run` in a subprocess; stderr goes to a file so a test can read the log.

    `prefix`: a command that execs the daemon (e.g. setpriv), so `proc` is still the daemon."""

    def __init__(self, args, port: int, env=None, log_path=None, prefix=()):
        self.port = port
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.log_path = log_path or f"/tmp/tc-daemon-test-{port}.log"
        self._log = open(self.log_path, "w")
        full_env = dict(os.environ, **(env or {}))
        full_env.setdefault("TC_DAEMON_MODELS_DIR", models_dir())
        self.proc = subprocess.Popen([*prefix, EXE, "run", *args], stdout=subprocess.DEVNULL, stderr=self._log,
                                     env=full_env)

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def wait_ready(self, timeout: float = 30.0):
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.log()}")
            try:
                return scrape(self.url)
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"no /metrics after {timeout} s: {self.log()}")

    def metrics(self) -> dict:
        return scrape(self.url)

    def wait_for(self, predicate, timeout: float = 20.0, what: str = "condition"):
        end = time.time() + timeout
        vals = None
        while time.time() < end:
            vals = self.metrics()
            if predicate(vals):
                return vals
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; last metrics: "
                             f"{ {k: v for k, v in (vals or {}).items() if v and 'bucket' not in k} }")

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def run_cli(*args, env=None, timeout=120):
    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("TC_DAEMON_MODELS_DIR", models_dir())
    return subprocess.run([EXE, *args], capture_output=True, text=True, env=full_env, timeout=timeout)


def error_lines(stderr: str):
    """stderr without TFLite's own INFO banner (printed by the interpreter library itself)."""
    return [l for l in stderr.splitlines() if l.strip() and not l.startswith("INFO: Created TensorFlow Lite")]
