"""32-bit Raspberry Pi OS has only tflite-runtime 2.14 (with numpy < 2): the shipped models on it.

The same runtime version exists for x86_64, so this runs the daemon's model
loading and `classify` on tflite-runtime 2.14.0 in a venv of its own. Every
int8 model must load there; a model needing newer op versions (dynamic-range
FULLY_CONNECTED) must be skipped by the budget choice with one log line, not
fail the start. Needs pip access to PyPI (the wheel is ~2 MB).
"""
import json
import os
import shutil
import subprocess
import sys
import venv

import pytest

from tests.daemon_proc import need

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "daemon", "data", "dropbox.pcap")
SHIPPED = os.path.join(ROOT, "models", "shipped")
TEST_DATA = os.path.join(ROOT, "tests", "data")
PROBE = """
import json, sys
from daemon import registry
from daemon.classifier import ModelError
out = {}
for e in registry.load_manifest()["models"]:
    try:
        registry.open_model(e)
        out[e["name"]] = "ok"
    except ModelError as err:
        out[e["name"]] = str(err)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def old_python(tmp_path_factory):
    need(sys.platform == "linux" and os.uname().machine == "x86_64", "tflite-runtime 2.14 wheels: x86_64 here")
    d = tmp_path_factory.mktemp("tflite214")
    venv.create(d, with_pip=True)
    py = str(d / "bin" / "python")
    r = subprocess.run([py, "-m", "pip", "install", "-q", "tflite-runtime==2.14.0", "numpy<2", "pyyaml",
                        "prometheus-client"], capture_output=True, text=True)
    need(r.returncode == 0, f"cannot install tflite-runtime 2.14.0: {r.stderr.strip()[-300:]}")
    return py


def run(py, *args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([py, *args], capture_output=True, text=True, env=env, cwd=ROOT)


def test_int8_models_load_on_tflite_runtime_2_14(old_python):
    r = run(old_python, "-c", "import tflite_runtime, ai_edge_litert")
    assert "No module named 'ai_edge_litert'" in r.stderr  # the fallback import is what runs here
    r = run(old_python, "-c", PROBE)
    assert r.returncode == 0, r.stderr
    loaded = json.loads(r.stdout)
    manifest = json.load(open(os.path.join(ROOT, "models", "shipped", "manifest.json")))["models"]
    for e in manifest:
        if e["quantization"] == "int8":
            assert loaded[e["name"]] == "ok", (e["name"], loaded[e["name"]])
        else:
            assert loaded[e["name"]] == "ok" or "find op" in loaded[e["name"]], loaded[e["name"]]


def test_classify_on_tflite_runtime_2_14(old_python):
    """The budget choice skips what the old runtime cannot build and classifies with the next best."""
    r = run(old_python, "-m", "daemon", "classify", SAMPLE, "--output", "flows", "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    flows = [json.loads(line) for line in r.stdout.splitlines()]
    assert flows and all(f["packets"] > 0 for f in flows)
    assert "Traceback" not in r.stderr


def test_budget_choice_skips_a_model_the_runtime_cannot_build(old_python, tmp_path):
    """The shipped models plus a dynamic-range one (tests/data, once shipped) ranked first: the old
    runtime cannot build it, so the choice skips it with one warning line and loads the next best."""
    manifest = json.load(open(os.path.join(SHIPPED, "manifest.json")))
    first = json.load(open(os.path.join(TEST_DATA, "lstm-100k-dynamic.json")))
    shutil.copy(os.path.join(TEST_DATA, first["file"]), tmp_path / first["file"])
    manifest["models"].append(first)
    for e in manifest["models"]:
        if e is not first:
            shutil.copy(os.path.join(SHIPPED, e["file"]), tmp_path / e["file"])
        for split in e.get("accuracy", {}):
            e["accuracy"][split]["accuracy"] = 1.0 if e is first else 0.5
    json.dump(manifest, open(tmp_path / "manifest.json", "w"))
    probe = ("import logging; logging.basicConfig(); from daemon import model; "
             f"m = model.load(directory={str(tmp_path)!r}); print(m.name)")
    r = run(old_python, "-c", probe)
    assert r.returncode == 0, r.stderr
    assert "find op" in r.stderr and r.stdout.strip() not in ("", first["name"])
    assert len([ln for ln in r.stderr.splitlines() if "needs a newer TFLite runtime" in ln]) == 1
    # the current runtime builds it: the same manifest chooses it there
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == first["name"], r.stderr
