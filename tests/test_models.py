"""The shipped models: manifest, sha256, reference outputs, and choosing by memory budget."""
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from daemon import registry
from daemon.classifier import Classifier, ModelError

SHIPPED = registry.SHIPPED_DIR
MANIFEST = registry.load_manifest()["models"]
FIXTURES = np.load(os.path.join(SHIPPED, "fixtures.npz"))


def test_manifest_fields():
    need = {"name", "file", "family", "classes", "params", "bytes", "sha256", "quantization", "view",
            "reject_threshold", "accuracy", "pps_batch1", "pps_batch64", "peak_memory_bytes"}
    assert MANIFEST
    for e in MANIFEST:
        assert need <= set(e), need - set(e)
        path = os.path.join(SHIPPED, e["file"])
        blob = open(path, "rb").read()
        assert len(blob) == e["bytes"] and hashlib.sha256(blob).hexdigest() == e["sha256"]
        # its own split, measured on the TFLite file; the other splits where that cell was trained
        assert e["trained_split"] in e["accuracy"] and set(e["accuracy"]) == {"random", "flow", "capture"}
        for split, a in e["accuracy"].items():
            assert 0 <= a["accuracy"] <= 1 and 0 <= a["macro_f1"] <= 1, (e["name"], split)


def test_shipped_set_covers_budgets_and_families():
    have = {(e["family"], e["quantization"]) for e in MANIFEST}
    assert {("mlp", "int8"), ("lstm", "int8")} <= have
    for fam in ("mlp", "lstm"):
        params = sorted(e["params"] for e in MANIFEST if e["family"] == fam and e["quantization"] == "int8")
        for target in (15_000, 100_000, 400_000, 1_000_000):
            assert any(abs(p - target) <= 0.05 * target for p in params), (fam, target, params)


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["name"] for e in MANIFEST])
def test_tflite_matches_reference_outputs(entry):
    clf = registry.open_model(entry)
    x = FIXTURES["x/" + entry["name"]]
    got = clf.predict(x)
    ref = FIXTURES["tflite/" + entry["name"]]
    # same file, same interpreter: equal up to one output quantum
    np.testing.assert_allclose(got, ref, atol=(clf.out_scale or 1e-6) * 1.01 + 1e-6)
    # and close to the Keras original: the export kept it within a point of Keras's accuracy; the
    # argmax agreement it measured on the whole test split bounds what these 32 packets show (the
    # int8 LSTMs, unsure on unseen captures, flip near-ties: about 0.8 agreement at equal accuracy)
    assert entry["accuracy_loss"] <= 0.01
    keras = FIXTURES["keras/" + entry["name"]]
    agree = (got.argmax(1) == keras.argmax(1)).mean()
    assert agree >= min(0.9, entry["keras_agreement"] - 0.15), (agree, entry["keras_agreement"])


@pytest.mark.parametrize("entry", [e for e in MANIFEST if e["quantization"] == "int8"],
                         ids=lambda e: e["name"])
def test_int8_models_take_raw_bytes(entry):
    clf = registry.open_model(entry)
    assert clf.raw_bytes, "int8 input should be scale 1/255, zero point -128"


def test_choose_most_accurate_that_fits():
    best = registry.choose(MANIFEST)
    assert registry.rank_accuracy(best) == max(registry.rank_accuracy(e) for e in MANIFEST)
    small = min(MANIFEST, key=registry.memory_of)
    pick = registry.choose(MANIFEST, registry.memory_of(small))
    assert registry.memory_of(pick) <= registry.memory_of(small)
    # exactly at a model's memory it fits; one byte less and it does not
    for e in MANIFEST:
        assert registry.memory_of(registry.choose(MANIFEST, registry.memory_of(e))) <= registry.memory_of(e)


def test_budget_nothing_fits_names_smallest():
    small = min(MANIFEST, key=registry.memory_of)
    with pytest.raises(ModelError, match=small["name"]):
        registry.choose(MANIFEST, registry.memory_of(small) - 1)


def test_pps_floor():
    fastest = max(MANIFEST, key=lambda e: e["pps_batch1"])
    assert registry.choose(MANIFEST, None, fastest["pps_batch1"])["name"] == fastest["name"]
    with pytest.raises(ModelError, match="packets/s"):
        registry.choose(MANIFEST, None, fastest["pps_batch1"] * 10)


@pytest.mark.parametrize("s,n", [("2MiB", 2 << 20), ("500k", 500_000), ("1.5MB", 1_500_000), (1024, 1024),
                                 ("64KiB", 65536)])
def test_parse_size(s, n):
    assert registry.parse_size(s) == n


def test_parse_size_rejects_nonsense():
    with pytest.raises(ValueError):
        registry.parse_size("lots")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], capture_output=True, text=True)


def test_models_list_json_marks_default():
    r = run_cli("models", "list", "--format", "json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert sum(r["default"] for r in rows) == 1
    for row in rows:
        assert {"name", "family", "classes", "params", "bytes", "default"} <= set(row)


def test_models_list_budget_edges():
    small = min(MANIFEST, key=registry.memory_of)
    r = run_cli("models", "list", "--format", "json", "--memory-budget", str(registry.memory_of(small)))
    rows = json.loads(r.stdout)
    chosen = [x for x in rows if x["default"]]
    assert r.returncode == 0 and len(chosen) == 1
    r = run_cli("models", "list", "--memory-budget", "1k")
    assert r.returncode != 0
    assert r.stderr.count("\n") == 1 and small["name"] in r.stderr and "Traceback" not in r.stderr


def test_missing_corrupt_and_mismatched_files(tmp_path):
    e = dict(MANIFEST[0])
    e["path"] = str(tmp_path / "missing.tflite")
    with pytest.raises(ModelError, match="missing.tflite"):
        registry.open_model(e)
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00garbage" * 100)
    e["path"] = str(bad)
    with pytest.raises(ModelError, match="sha256"):
        registry.open_model(e)
    e["sha256"] = hashlib.sha256(bad.read_bytes()).hexdigest()
    with pytest.raises(ModelError, match="cannot load"):
        registry.open_model(e)
    with pytest.raises(ModelError):
        Classifier(str(bad))


def test_bench_remeasures_and_updates_a_manifest(tmp_path):
    """`tc-daemon bench --only models --update-manifest` on a private copy of two shipped models:
    it measures each (the real interpreter, a fresh process for memory) and writes the figures back."""
    picks = [min((e for e in MANIFEST if e["family"] == f), key=lambda e: e["params"]) for f in ("mlp", "lstm")]
    for e in picks:
        shutil.copyfile(os.path.join(SHIPPED, e["file"]), tmp_path / e["file"])
    stale = [dict(e, pps_batch1=1.0, pps_batch64=1.0, peak_memory_bytes=1) for e in picks]
    json.dump({"models": stale, "cpu": "stale"}, open(tmp_path / "manifest.json", "w"))
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "daemon.cli", "bench", "--only", "models", "--quick",
                        "--update-manifest", "-o", str(out)], capture_output=True, text=True,
                       env=dict(os.environ, TC_DAEMON_MODELS_DIR=str(tmp_path)))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    rows = {x["name"]: x for x in json.load(open(out))["models"]}
    assert set(rows) == {e["name"] for e in picks}
    m = json.load(open(tmp_path / "manifest.json"))
    assert m["cpu"] != "stale"
    for e in m["models"]:
        row = rows[e["name"]]
        assert row["pps_batch1"] > 1 and row["over_manifest"]["pps_batch1"] == row["pps_batch1"] / 1.0
        assert e["pps_batch1"] == row["pps_batch1"] and e["peak_memory_bytes"] == row["peak_memory_bytes"] > 1
        assert e["sha256"] == next(p["sha256"] for p in picks if p["name"] == e["name"])  # the rest untouched
    if importlib.util.find_spec("matplotlib"):  # the [train] extra: the bench draws its JSON too
        assert (tmp_path / "bench-models.png").stat().st_size > 10000 and "bench-models.png" in r.stdout
