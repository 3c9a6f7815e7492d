"""The training side end to end, tiny: dataset -> sweep -> report -> export -> the daemon loads it.

Two budgets, one epoch, five real captures: not a result, a guard that the
pipeline from captures to a shipped model cannot rot unnoticed. The full
sweep is a documented command (README, docs/paper-reproduction.md).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="the [train] extra")  # tests/run installs it; the gateway does not

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTURES = [os.path.join(ROOT, "tests", "data", f) for f in ("whatsapp.pcap", "facebook.pcap", "doh.pcapng",
                                                             "http2.pcapng")] + \
           [os.path.join(ROOT, "daemon", "data", "dropbox.pcap")]


def cli(*args, env=None):
    r = subprocess.run([sys.executable, "-m", "daemon", *args], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {})))
    assert r.returncode == 0, f"tc-daemon {' '.join(args)}: {r.stderr[-2000:]}"
    assert "Traceback" not in r.stderr
    return r


def test_tiny_sweep_export_and_serve(tmp_path):
    ds, runs, rep, ship = (str(tmp_path / n) for n in ("ds.npz", "runs", "report", "shipped"))
    r = cli("dataset", "build", *CAPTURES, "-o", ds, "--classes", "WhatsApp,Facebook,DoH_DoT,Dropbox", "-q")
    assert "WhatsApp" in r.stdout and "other" in r.stdout
    r = cli("sweep", "-d", ds, "--out", runs, "--families", "svm,mlp,lstm", "--budgets", "15000,30000",
            "--epochs", "1", "--splits", "random,flow,capture", "--report", rep, "-q")
    # each class sits in one capture here, so the capture split has no validation or test part:
    # every such cell is skipped with a one-line reason, and the sweep goes on
    assert r.stderr.count("skipped: the capture split leaves no") == 1 + 2 * 2, r.stderr
    cells = sorted(os.listdir(runs))
    # svm: random + flow; mlp/lstm: 2 budgets x (3 lrs on random + flow)
    assert len(cells) == 2 + 2 * 2 * 4, cells
    for c in cells:
        res = json.load(open(os.path.join(runs, c, "results.json")))
        assert 0 <= res["packet"]["accuracy"] <= 1 and res["train_seconds"] >= 0
    md = open(rep + ".md").read()
    assert "## Accuracy, " in md and "## Speed" in md
    assert os.path.exists(os.path.join(rep + "-figures", "accuracy-random.png"))
    assert len(json.load(open(rep + "-results.json"))) == len(cells)

    pick = [os.path.join(runs, c) for c in cells if c.endswith("flow-s0") and "15000" in c and "svm" not in c]
    cli("export", *pick, "-d", ds, "--ship", ship, "--quant", "int8", "--fallback", "dynamic")
    listed = json.loads(cli("models", "list", "--format", "json", env={"TC_DAEMON_MODELS_DIR": ship}).stdout)
    assert {m["family"] for m in listed} == {"mlp", "lstm"}
    assert sum(m.get("default", False) for m in listed) == 1
    out = cli("classify", CAPTURES[0], "--output", "flows", "--format", "jsonl",
              env={"TC_DAEMON_MODELS_DIR": ship}).stdout.splitlines()
    flows = [json.loads(line) for line in out]
    assert flows and {f["class"] for f in flows} <= {"WhatsApp", "Facebook", "DoH_DoT", "Dropbox", "other"}

    # the backwards-reading LSTM the shipped int8 LSTMs use: same parameters, its own cell and model
    # name, its own siblings, and left out of the paper's report
    cli("train", "-d", ds, "--family", "lstm", "--reverse", "--budget", "15000", "--lr", "0.01",
        "--split", "flow", "--epochs", "1", "--out", runs, "-q")
    rev = json.load(open(os.path.join(runs, "lstm-rev-15000-lr0.01-flow-s0", "results.json")))
    fwd = json.load(open(os.path.join(runs, next(c for c in cells if c.startswith("lstm-15000-")), "results.json")))
    assert rev["reverse"] is True and not fwd["reverse"] and rev["params"] == fwd["params"]
    (old,) = [m["name"] for m in listed if m["family"] == "lstm"]
    cli("export", os.path.join(runs, "lstm-rev-15000-lr0.01-flow-s0"), "-d", ds, "--ship", ship,
        "--quant", "int8", "--fallback", "dynamic", "--replace", old)
    entries = json.load(open(os.path.join(ship, "manifest.json")))["models"]
    shipped = [e for e in entries if e["name"].startswith("lstm-rev-15k-")]
    assert len(shipped) == 1 and shipped[0]["reverse"] is True
    # what it replaced is gone: entry, file, fixtures, Keras weights
    assert old not in {e["name"] for e in entries} and not os.path.exists(os.path.join(ship, old + ".tflite"))
    assert not any(k.endswith("/" + old) for k in np.load(os.path.join(ship, "fixtures.npz")).files)
    assert not os.path.exists(os.path.join(ship, "keras", old + ".npz"))
    assert any(k.endswith("/" + shipped[0]["name"]) for k in np.load(os.path.join(ship, "fixtures.npz")).files)
    # its random-split figure comes from no forward sibling (there is no reverse one on that split)
    assert set(shipped[0]["accuracy"]) == {"flow"}
    cli("report", "--runs", runs, "--out", rep)
    assert len(json.load(open(rep + "-results.json"))) == len(cells)


def test_tiny_crossval_and_unseen_report(tmp_path):
    """crossval over capture groups, one epoch, then the unseen-traffic report from its folds."""
    ds, cv, rep = (str(tmp_path / n) for n in ("ds.npz", "cv", "unseen"))
    cli("dataset", "build", *CAPTURES, "-o", ds, "--classes", "WhatsApp,Facebook,DoH_DoT,Dropbox", "-q")
    r = cli("crossval", "-d", ds, "--out", cv, "--family", "mlp", "--budget", "15000", "--folds", "3",
            "--epochs", "1", "--seeds", "0,1")
    # five captures, one class each: a fold whose validation part holds none of the classes is
    # skipped with its reason, the others train
    trained = r.stderr.count(" params, ")
    assert trained >= 3 and trained + r.stderr.count("skipped: no training or validation") == 6, r.stderr
    assert "flow k=3+reject" in r.stdout
    r = cli("crossval", "-d", ds, "--out", cv, "--family", "mlp", "--budget", "15000", "--folds", "3",
            "--epochs", "1", "--seeds", "0,1")
    assert r.stderr.count("done before, skipped") == trained  # resumable: finished folds are not retrained
    cli("crossval", "-d", ds, "--out", cv, "--family", "flowmlp", "--budget", "5000", "--folds", "3",
        "--epochs", "1", "--no-tflite")
    cli("report", "--cv", cv, "--out", rep)
    md = open(rep + ".md").read()
    for section in ("## The variants", "## Against the target", "## How many packets decide a flow",
                    "## Progressive decisions", "## The reject threshold", "## Where the best variant goes wrong"):
        assert section in md
    for png in ("k-sweep.png", "open-set.png", "confusion-mlp-15000.png", "confusion-flowmlp-5000.png"):
        assert os.path.getsize(os.path.join(rep + "-figures", png)) > 1000
    res = json.load(open(rep + "-results.json"))
    assert set(res) == {"mlp-15000", "flowmlp-5000"}
    m = res["mlp-15000"]
    assert len(m["folds"]) == trained and "tflite_bytes" in m["folds"][0] and m["folds"][0]["int8_agreement"] >= 0
    acc, spread = m["rules"]["flow k=3"]["accuracy"]
    assert 0 <= acc <= 1 and spread >= 0
