"""Helpers for tests that start `tc-daemon run` as a real process and read its /metrics."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from bench import DEFAULT_CORPUS
from bench.promtext import by_label, free_port, scrape, total  # noqa: F401 (imported from here by the tests)
from daemon import config, registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(ROOT, "daemon", "data")
DATA = os.path.join(ROOT, "tests", "data")
# the whole shared corpus, for the tests that run all of it: the benches' (beside the checkout), or TC_CORPUS
CORPUS = os.environ.get("TC_CORPUS") or DEFAULT_CORPUS
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


def local_capture(name: str) -> str:
    """A capture kept in the project (tests/data, then daemon/data): the live tests replay these."""
    for d in (DATA, SAMPLES):
        if os.path.isfile(os.path.join(d, name)):
            return os.path.join(d, name)
    raise FileNotFoundError(f"{name}: not in tests/data or daemon/data")


def need_corpus():
    """The whole-corpus tests need ../shared/data/ndpi-pcaps (or TC_CORPUS). It is not part of the
    project (31 MB, LGPL); a clone without it skips them, under CI too, and says so; their figures
    are recorded in docs/reliability.md."""
    if not os.path.isdir(CORPUS):
        pytest.skip(f"the shared corpus is not at {CORPUS} (set TC_CORPUS)")


def is_root() -> bool:
    return os.geteuid() == 0


def copy_models(dest: str, name: str = None) -> dict:
    """A private models folder holding one model (default: the one the registry chooses) and its manifest."""
    src = models_dir()
    m = registry.load_manifest(src)
    # no name: the model the daemon would choose by default (the default config's memory budget)
    entry = next(e for e in m["models"] if e["name"] == name) if name else \
        registry.choose(m["models"], config.Config().model.memory_budget)
    os.makedirs(dest, exist_ok=True)
    shutil.copyfile(os.path.join(src, entry["file"]), os.path.join(dest, entry["file"]))
    with open(os.path.join(dest, registry.MANIFEST), "w") as f:
        json.dump(dict(m, models=[entry]), f)
    return entry


def write_config(path: str, text: str) -> str:
    with open(path, "w") as f:
        f.write(text)
    return path


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


def classify_flows(*paths, env=None) -> list:
    """`tc-daemon classify PATHS --output flows --format jsonl`, one dict a flow (what the live daemon must match)."""
    r = run_cli("classify", *paths, "--output", "flows", "--format", "jsonl", env=env)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def per_class(rows, field: str = "packets") -> Counter:
    """{class: sum of field} over classify's flow rows: the per-class totals /metrics must show."""
    out = Counter()
    for row in rows:
        out[row["class"]] += row[field]
    return out


def error_lines(stderr: str):
    """stderr without TFLite's own INFO banner (printed by the interpreter library itself)."""
    return [l for l in stderr.splitlines() if l.strip() and not l.startswith("INFO: Created TensorFlow Lite")]
