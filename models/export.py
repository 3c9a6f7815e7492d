"""Keras -> TFLite (float32, dynamic-range, full int8), checked, measured, and shipped.

    tc-daemon export runs/lstm-100000-* --dataset ds.npz --quant int8

Each export is compared with its Keras model on the test split (argmax
agreement, accuracy difference); one that loses more than 1 point is not
shipped. Shipped files land in models/shipped/ with a manifest entry that the
daemon's registry reads (daemon/registry.py).
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from daemon import registry
from daemon.classifier import Classifier

from . import dataset, zoo
from .metrics import scores
from bench.machine import cpu_model

from .train import select, view

MAX_LOSS = 0.01  # accuracy an export may lose against Keras and still ship
FIXTURE_N = 32   # test packets kept beside the shipped models, with each model's reference outputs


def convert(model, quant: str, rep_x=None) -> bytes:
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if quant in ("dynamic", "int8"):
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if quant == "int8":
        def rep():
            # the extremes first, so the input range is exactly [0, 1] -> scale 1/255, zero point -128
            yield [np.zeros((1,) + rep_x.shape[1:], np.float32)]
            yield [np.ones((1,) + rep_x.shape[1:], np.float32)]
            for i in range(0, len(rep_x), 1):
                yield [rep_x[i:i + 1]]
        conv.representative_dataset = rep
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    return conv.convert()


def calibrate_threshold(probs, y, keep=0.95) -> float:
    """Confidence below which a prediction is rejected as `other`: the level that keeps
    `keep` of the validation packets the model gets right."""
    conf = probs.max(1)
    right = conf[probs.argmax(1) == y]
    return float(np.quantile(right, 1 - keep)) if len(right) else 0.0


def export_run(run_dir, ds, quants=("int8",), ship_dir=None, rep_n=1000):
    import keras

    with open(os.path.join(run_dir, "results.json")) as f:
        res = json.load(f)
    model = keras.models.load_model(os.path.join(run_dir, "model.keras"))
    family = res["family"]
    tr, va, te = select(ds, res["split"], res.get("include_other", False), res.get("balance"), res.get("seed", 0))
    X, y = ds["X"], ds["label"]
    rng = np.random.default_rng(0)
    rep_x = view(family, X[rng.choice(tr, min(rep_n, len(tr)), replace=False)])
    k_probs = model.predict(view(family, X[te]), batch_size=1024, verbose=0)
    k_pred = k_probs.argmax(1)
    n = len(res["classes"])
    out = []
    for q in quants:
        blob = convert(model, q, rep_x)
        rev = bool(res.get("reverse"))
        name = f"{family}{'-rev' if rev else ''}-{round(res['params'] / 1000)}k-{q}"
        tmp = os.path.join(run_dir, name + ".tflite")
        with open(tmp, "wb") as f:
            f.write(blob)
        clf = Classifier(tmp, view=zoo.view_of(family))
        t_probs = clf.predict(X[te])
        t_pred = t_probs.argmax(1)
        agree = float((t_pred == k_pred).mean())
        acc_k, acc_t = float((k_pred == y[te]).mean()), float((t_pred == y[te]).mean())
        v_probs = clf.predict(X[va])
        entry = dict(name=name, file=name + ".tflite", family=family, quantization=q,
                     view=zoo.view_of(family), classes=res["classes"], params=res["params"], budget=res["budget"],
                     bytes=len(blob), sha256=hashlib.sha256(blob).hexdigest(),
                     input_dtype=str(clf.input_dtype), reject_threshold=calibrate_threshold(v_probs, y[va]),
                     keras_agreement=agree, keras_accuracy=acc_k, accuracy_loss=acc_k - acc_t,
                     trained_split=res["split"], lr=res["lr"], cpu=cpu_model(), reverse=rev,
                     accuracy={res["split"]: {"accuracy": acc_t, "macro_f1": scores(y[te], t_pred, n)["macro_f1"]}})
        for sib in _siblings(run_dir, res):
            if sib["split"] != res["split"]:
                entry["accuracy"][sib["split"]] = {"accuracy": sib["packet"]["accuracy"],
                                                   "macro_f1": sib["packet"]["macro_f1"],
                                                   "source": "keras, same architecture and rate trained on this split"}
        entry["accuracy"][res["split"]]["source"] = "this file (TFLite) on its own test split"
        entry["flow_decision_accuracy"] = {res["split"]: res["flow_decision_packets"]["accuracy"]}
        ship = (acc_k - acc_t) <= MAX_LOSS
        print(f"{name}: {len(blob)} bytes, keras agreement {agree:.3f}, accuracy keras {acc_k:.3f} "
              f"tflite {acc_t:.3f}{'' if ship else '  NOT SHIPPED (loses more than 1 point)'}")
        if ship and ship_dir:
            from bench import models as bm
            registry.ship(tmp, entry, ship_dir)
            placed = dict(entry, path=os.path.join(ship_dir, entry["file"]))
            figs = bm.tflite_figures(placed, batches=(1, 64))
            bm.record(entry["name"], dict(figs, peak_memory_bytes=bm.peak_memory(placed)), ship_dir)
            _save_keras(model, os.path.join(ship_dir, "keras", name + ".npz"))
            _save_fixture(ship_dir, name, X[te[:FIXTURE_N]], t_probs[:FIXTURE_N], k_probs[:FIXTURE_N])
        out.append((entry, ship))
    return out


def _siblings(run_dir, res):
    """Cells of the same architecture, rate and seed under the same sweep folder (other splits)."""
    parent = os.path.dirname(os.path.abspath(run_dir))
    out = []
    for d in os.listdir(parent):
        p = os.path.join(parent, d, "results.json")
        if os.path.exists(p):
            with open(p) as f:
                r = json.load(f)
            key = ("family", "budget", "lr", "seed")
            if [r[k] for k in key] == [res[k] for k in key] and r.get("reverse") == res.get("reverse"):
                out.append(r)
    return out


def _save_fixture(ship_dir, name, x, tflite_probs, keras_probs):
    """models/shipped/fixtures.npz: per model, public test-split payloads and its outputs on them,
    so tests can check each shipped .tflite without TensorFlow."""
    path = os.path.join(ship_dir, "fixtures.npz")
    d = dict(np.load(path)) if os.path.exists(path) else {}
    d[f"x/{name}"], d[f"tflite/{name}"], d[f"keras/{name}"] = x, tflite_probs, keras_probs
    np.savez_compressed(path, **d)


def _save_keras(model, path):
    """The Keras weights (float32 npz; zoo.build rebuilds the architecture), for `tc-daemon bench`:
    Keras predict beside TFLite for the very same model."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez_compressed(path, *model.get_weights())


def unship(name, ship_dir):
    """Take a model out of the shipped set: file and manifest entry (registry), fixtures, Keras weights."""
    if registry.unship(name, ship_dir) is None:
        return False
    keras_npz = os.path.join(ship_dir, "keras", name + ".npz")
    if os.path.exists(keras_npz):
        os.remove(keras_npz)
    fx = os.path.join(ship_dir, "fixtures.npz")
    if os.path.exists(fx):
        d = {k: v for k, v in np.load(fx).items() if k.split("/", 1)[1] != name}
        np.savez_compressed(fx, **d)
    return True


def main(a):
    ds = dataset.load(a.dataset)
    ship_dir = a.ship or registry.SHIPPED_DIR
    shipped = False
    for run in a.runs:
        done = export_run(run, ds, [q.strip() for q in a.quant.split(",")], ship_dir)
        if a.fallback and not any(ship for _, ship in done):
            print(f"  trying {a.fallback} instead")
            done = export_run(run, ds, [a.fallback], ship_dir)
        shipped = shipped or any(ship for _, ship in done)
    for name in (a.replace.split(",") if a.replace and shipped else []):
        if unship(name.strip(), ship_dir):
            print(f"{name.strip()}: taken out of {ship_dir}")
