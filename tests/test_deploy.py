"""Deployment files: systemd unit, install scripts, OpenWrt init, Prometheus rules, Grafana.

System tools used: systemd-analyze (apt: systemd), promtool (apt: prometheus),
shellcheck (apt: shellcheck), bash, sh. Under CI (CI=true) a missing tool FAILS
the test; locally it skips.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "tc-daemon.service"
DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana/tc-daemon-dashboard.json"
VALIDATOR = ROOT / "tests/deploy/validate_dashboard.py"
SCRIPTS = [DEPLOY / "install.sh", DEPLOY / "uninstall.sh", DEPLOY / "openwrt/tc-daemon.init"]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
APT = {"systemd-analyze": "systemd", "promtool": "prometheus", "shellcheck": "shellcheck",
       "bash": "bash", "sh": "dash"}
# Exposure measured for the unit as shipped (docs/deployment.md); a rise means
# a hardening line was lost.
MAX_EXPOSURE = 1.6


def tool(name: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    msg = f"{name} not found (apt-get install {APT.get(name, name)})"
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


def run(*cmd, cwd=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def load_validator():
    spec = importlib.util.spec_from_file_location("validate_dashboard", VALIDATOR)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def unit_copy(tmp_path) -> Path:
    """The unit with ExecStart pointed at an existing binary: verify checks that
    the binary exists, and /opt/tc-daemon/venv is not installed on a test machine."""
    text = UNIT.read_text()
    assert re.search(r"^ExecStart=/opt/tc-daemon/venv/bin/tc-daemon run --config /etc/tc-daemon/config.yaml$", text, re.M)
    p = tmp_path / "tc-daemon.service"
    p.write_text(re.sub(r"^ExecStart=\S+", "ExecStart=" + (shutil.which("true") or "/bin/true"), text, flags=re.M))
    return p


# --- systemd unit ------------------------------------------------------------

def test_unit_verify_prints_nothing(unit_copy):
    r = run(tool("systemd-analyze"), "verify", unit_copy)
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr


def test_unit_security_exposure(unit_copy):
    r = run(tool("systemd-analyze"), "security", "--offline=yes", "--no-pager", unit_copy)
    m = re.search(r"Overall exposure level for tc-daemon\.service: (\d+\.\d+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, r.stdout


def test_unit_keeps_its_design():
    keys = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            keys.setdefault(k, []).append(v)
    for k, v in {"Type": "notify", "NotifyAccess": "main", "WatchdogSec": "30", "Restart": "on-failure",
                 "RestartPreventExitStatus": "78", "DynamicUser": "yes", "AmbientCapabilities": "CAP_NET_RAW",
                 "CapabilityBoundingSet": "CAP_NET_RAW", "ProtectSystem": "strict", "MemoryDenyWriteExecute": "yes",
                 "PrivateNetwork": "no"}.items():
        assert keys.get(k) == [v], (k, keys.get(k))
    # PrivateUsers would void CAP_NET_RAW in the host netns; ProcSubset=pid hides /proc/cpuinfo
    assert "PrivateUsers" not in keys and "ProcSubset" not in keys
    assert set(keys["RestrictAddressFamilies"][0].split()) == {"AF_PACKET", "AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"}


MDWE_PROBE = r"""
import ctypes, glob, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:        # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN (Linux >= 6.3)
    print("NO_MDWE"); sys.exit(0)
import numpy as np
try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:
    from tflite_runtime.interpreter import Interpreter
n = 0
for p in sorted(glob.glob(sys.argv[1] + "/*.tflite")):
    it = Interpreter(model_path=p, num_threads=2)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    it.invoke()
    n += 1
print("OK", n)
"""


def test_models_run_without_write_execute_memory():
    """MemoryDenyWriteExecute=yes: numpy and the TFLite runtime must load and run every
    shipped model with W+X mappings refused (same rule via prctl(PR_SET_MDWE))."""
    have = any(importlib.util.find_spec(m) for m in ("ai_edge_litert", "tflite_runtime"))
    if not have:
        msg = f"no TFLite runtime in {sys.executable}"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    shipped = ROOT / "models/shipped"
    if not list(shipped.glob("*.tflite")):
        pytest.skip("no shipped models")
    r = run(sys.executable, "-c", MDWE_PROBE, shipped, timeout=300)
    if r.stdout.strip() == "NO_MDWE":
        pytest.skip("kernel has no PR_SET_MDWE (< 6.3)")
    assert r.returncode == 0 and r.stdout.strip().startswith("OK"), r.stdout + r.stderr[-3000:]


# --- Prometheus ----------------------------------------------------------------

def test_promtool_check_config():
    r = run(tool("promtool"), "check", "config", "prometheus.yml", cwd=PROM)
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_check_rules():
    r = run(tool("promtool"), "check", "rules", "recording_rules.yml", "alert_rules.yml", cwd=PROM)
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_test_rules():
    r = run(tool("promtool"), "test", "rules", "rules_test.yml", cwd=PROM)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


# --- Grafana -------------------------------------------------------------------

def test_dashboard_validator():
    r = run(sys.executable, VALIDATOR)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr


def test_validator_knows_every_metric_family():
    """The validator's list of the daemon's families (it runs without importing the daemon) is the
    registry's: a new metric is usable in rules and panels, and a dropped one is caught."""
    from daemon import metrics as M
    v = load_validator()
    families = {m.name for m in M.REGISTRY.collect() if m.name.startswith("tc_daemon_")}
    listed = ({f"tc_daemon_{c}" for c in v.COUNTERS} | {f"tc_daemon_{h}" for h in v.HISTOGRAMS}
              | {f"tc_daemon_{g}" for g in v.GAUGES})
    assert listed == families


def test_dashboard_exprs_parse_in_promtool(tmp_path):
    """Each panel query, Grafana variables substituted, is valid PromQL."""
    v = load_validator()
    exprs = v.dashboard_exprs(DASHBOARD.read_text())
    rules = ["groups:", "  - name: dashboard", "    rules:"]
    for i, e in enumerate(exprs):
        e = e.replace("$__rate_interval", "1m").replace("$instance", ".*")
        assert "$" not in e, e
        rules += [f"      - record: dashboard_expr_{i}", f"        expr: {json.dumps(e)}"]
    f = tmp_path / "dashboard_rules.yml"
    f.write_text("\n".join(rules) + "\n")
    r = run(tool("promtool"), "check", "rules", f)
    assert r.returncode == 0 and f"SUCCESS: {len(exprs)} rules found" in r.stdout, r.stdout + r.stderr


def test_dashboard_validator_catches_mistakes():
    v = load_validator()
    rules = [(PROM / "recording_rules.yml").read_text()]
    good = json.loads(DASHBOARD.read_text())
    assert v.validate(json.dumps(good), rules)[0] == []

    bad = json.loads(DASHBOARD.read_text())
    bad["panels"][1]["id"] = bad["panels"][0]["id"]
    bad["panels"][2]["targets"][0]["expr"] = "rate(node_network_receive_bytes_total[5m])"
    bad["panels"][3]["targets"][0]["expr"] = "tc_daemon_packet_total"
    bad["panels"][4]["targets"][0]["expr"] = "class:tc_daemon_packets:rate1h"
    del bad["panels"][5]["datasource"]
    del bad["panels"][6]["gridPos"]
    bad["panels"][7]["gridPos"] = dict(bad["panels"][8]["gridPos"])
    errors = "\n".join(v.validate(json.dumps(bad), rules)[0])
    for needle in ("duplicate id", "node_network_receive_bytes_total", "tc_daemon_packet_total is not a metric",
                   "class:tc_daemon_packets:rate1h", "datasource must be", "gridPos missing", "overlaps"):
        assert needle in errors, (needle, errors)
    assert v.validate("{not json", rules)[0][0].startswith("dashboard: not JSON")


def test_grafana_provisioning_points_at_prometheus():
    ds = (DEPLOY / "grafana/provisioning/datasources.yaml").read_text()
    assert "type: prometheus" in ds and "apiVersion: 1" in ds
    db = (DEPLOY / "grafana/provisioning/dashboards.yaml").read_text()
    assert "type: file" in db and "path:" in db


# --- shell scripts ---------------------------------------------------------------

@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_syntax(script):
    r = run(tool("bash"), "-n", script)
    assert r.returncode == 0, r.stderr
    if script.suffix == ".init":       # runs under BusyBox ash on OpenWrt: POSIX sh too
        r = run(tool("sh"), "-n", script)
        assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script):
    r = run(tool("shellcheck"), script)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow
def test_install_and_uninstall_into_a_scratch_root(tmp_path):
    """install.sh into DESTDIR (real venv, real pip install of this tree), twice;
    then uninstall.sh, then --purge. Needs PyPI or a warm pip cache."""
    tool("bash")
    root = tmp_path / "root"
    env = dict(os.environ, DESTDIR=str(root))
    cfg = root / "etc/tc-daemon/config.yaml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("# operator's own\n")           # must survive every step below
    for _ in range(2):                               # idempotent
        r = subprocess.run(["bash", str(DEPLOY / "install.sh"), "--no-start", "--prefix", "/srv/tcd"],
                           env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "keeping existing" in r.stdout and "skipping systemctl" in r.stdout
    assert cfg.read_text() == "# operator's own\n"
    unit = (root / "etc/systemd/system/tc-daemon.service").read_text()
    assert "ExecStart=/srv/tcd/venv/bin/tc-daemon run --config /etc/tc-daemon/config.yaml" in unit
    r = run(root / "srv/tcd/venv/bin/tc-daemon", "--version")
    assert r.returncode == 0, r.stderr

    r = subprocess.run(["bash", str(DEPLOY / "uninstall.sh"), "--prefix", "/srv/tcd"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert not (root / "srv/tcd").exists() and not (root / "etc/systemd/system/tc-daemon.service").exists()
    assert cfg.exists()
    r = subprocess.run(["bash", str(DEPLOY / "uninstall.sh"), "--prefix", "/srv/tcd", "--purge"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert not cfg.parent.exists()
