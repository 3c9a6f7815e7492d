"""Packets/s against batch size, Keras `predict` (the paper's method) beside TFLite, same run.

Results are cached as speed.json in each cell's folder (CPU named), so a
report can be rebuilt without re-measuring.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np

from daemon.classifier import Classifier
from daemon.features import N_BYTES

from . import zoo
from bench.machine import cpu_model

from .train import view

BATCHES = (1, 4, 16, 64, 256, 1024)


def _rate(fn, batch, min_seconds=0.5, max_calls=200):
    fn()  # warm-up (allocations, first-call tracing)
    calls, t0 = 0, time.perf_counter()
    while calls < max_calls and (calls < 3 or time.perf_counter() - t0 < min_seconds):
        fn()
        calls += 1
    return batch * calls / (time.perf_counter() - t0)


def measure(cell_dir, quant="int8", batches=BATCHES, rep_x=None, force=False):
    path = os.path.join(cell_dir, "speed.json")
    if os.path.exists(path) and not force:
        with open(path) as f:
            return json.load(f)
    import keras

    from .export import convert

    with open(os.path.join(cell_dir, "results.json")) as f:
        res = json.load(f)
    family = res["family"]
    model = keras.models.load_model(os.path.join(cell_dir, "model.keras"))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (max(batches), N_BYTES), dtype=np.uint8)
    x[:, :20] = 0
    xv = view(family, x)
    tfl = os.path.join(cell_dir, f"speed-{quant}.tflite")
    with open(tfl, "wb") as f:
        f.write(convert(model, quant, xv[:64] if rep_x is None else rep_x))
    clf = Classifier(tfl, view=zoo.view_of(family), max_batch=max(batches))
    out = dict(cpu=cpu_model(), family=family, params=res["params"], quant=quant, keras={}, tflite={})
    for b in batches:
        out["keras"][str(b)] = _rate(lambda: model.predict(xv[:b], batch_size=b, verbose=0), b)
        out["tflite"][str(b)] = _rate(lambda: clf.predict(x[:b]), b)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    return out
