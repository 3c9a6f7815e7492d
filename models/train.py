"""Train and evaluate one configuration: family x budget x learning rate x split.

    tc-daemon train --dataset ds.npz --family lstm --budget 100000 --lr 5e-3 --split random

Writes <out>/<cell>/results.json (and model.keras): accuracy, macro-F1,
per-class F1 and confusion on the test part, per packet and with flow
decisions, training time, exact parameter count and Keras predict speed.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np

from bench.machine import cpu_model
from daemon.errors import CliError
from daemon.features import MASK, N_BYTES, as_flat, as_sequence

from . import dataset, zoo
from .metrics import flow_decisions, scores

LR_GRID = {"mlp": [1e-3, 5e-4, 1e-4], "lstm": [1e-2, 5e-3, 1e-3], "cnn": [1e-3], "cnnlstm": [1e-3], "svm": [0.0]}
SPLITS = ("random", "flow", "capture")


def cell_name(family, budget, lr, split, seed=0, reverse=False):
    return f"{family}{'-rev' if reverse else ''}-{budget}-lr{lr:g}-{split}-s{seed}"


def select(ds, split, include_other=False, balance_to=None, seed=0):
    """Indices of train/val/test for `split`, restricted to the known classes unless asked."""
    y = ds["label"]
    other = len(ds["classes"]) - 1
    keep = np.arange(len(y)) if include_other else np.flatnonzero(y != other)
    if balance_to:
        counts = np.bincount(y[keep])
        per = int(counts[counts > 0].min()) if balance_to == "min" else int(balance_to)
        keep = keep[dataset.balance(y[keep], per, seed)]
    part = ds["split_" + split][keep]
    return keep[part == 0], keep[part == 1], keep[part == 2]


def view(family, x):
    return as_sequence(x) if zoo.view_of(family) == "sequence" else as_flat(x)


def shift_options(x, seed, step=4, most=12):
    """The bytes after the 20 masked ones pushed right by 4, 8 or 12 bytes of TCP NOP options
    (0x01): the same payload behind a longer header, as another stack or middlebox would send it."""
    rng = np.random.default_rng(seed)
    out = x.copy()
    shift = step * rng.integers(1, most // step + 1, len(x))
    for s in range(step, most + 1, step):
        rows = np.flatnonzero(shift == s)
        out[rows, MASK + s:] = x[rows, MASK:N_BYTES - s]
        out[rows, MASK:MASK + s] = 1
    return out


def keras_speed(model, x_one, calls=30) -> float:
    """Packets/s of Keras predict on one packet per call: the paper's measurement."""
    model.predict(x_one, verbose=0)
    t = time.perf_counter()
    for _ in range(calls):
        model.predict(x_one, verbose=0)
    return calls / (time.perf_counter() - t)


def fit(ds, family, budget, lr, tr, va, n, epochs=30, patience=5, batch_size=128, seed=0, class_weight=True,
        verbose=1, reverse=False, augment=False):
    """Train `family` on the packets `tr` (early stopping on `va`) for `n` classes.
    augment: train on each packet twice, once with its bytes after the mask shifted (shift_options).

    Returns (model, parameters, epochs run, best validation accuracy, seconds)."""
    import keras

    X, y = ds["X"], ds["label"]
    t0 = time.time()
    if family == "svm":
        from sklearn.svm import LinearSVC
        svm = LinearSVC(C=1.0, class_weight="balanced" if class_weight else None, random_state=seed,
                        max_iter=2000)
        svm.fit(as_flat(X[tr]), y[tr])
        model, params = zoo.build("svm", 0, n, seed)
        W = np.zeros((zoo.N_IN, n), np.float32)
        b = np.full(n, -1e3, np.float32)  # classes absent from training can never win
        W[:, svm.classes_] = svm.coef_.T if n > 2 else np.c_[-svm.coef_.T, svm.coef_.T]
        b[svm.classes_] = svm.intercept_
        model.layers[-1].set_weights([W, b])
        model = keras.Sequential([model, keras.layers.Softmax(name="probs")])
        epochs_run, best_val = 0, float((svm.predict(as_flat(X[va])) == y[va]).mean()) if len(va) else 0.0
    else:
        model, params = zoo.build(family, budget, n, seed, reverse=reverse)
        xtr, ytr = X[tr], y[tr]
        if augment:
            xtr, ytr = np.concatenate([xtr, shift_options(xtr, seed)]), np.r_[ytr, ytr]
        epochs_run, best_val = fit_keras(model, lr, view(family, xtr), ytr, view(family, X[va]), y[va], epochs,
                                         patience, batch_size, class_weight, verbose)
    return model, params, epochs_run, best_val, time.time() - t0


def class_weights(y, n):
    """Balanced: each class weighs as much as the others in the loss, however many packets it has."""
    counts = np.bincount(y, minlength=n).astype(float)
    return {i: (len(y) / (n * c) if c else 0.0) for i, c in enumerate(counts)}


def fit_keras(model, lr, xtr, ytr, xva, yva, epochs, patience, batch_size, class_weight=True, verbose=0):
    """Adam at `lr`, early stopping on validation accuracy (best weights kept): (epochs run, best val)."""
    import keras

    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=patience, restore_best_weights=True)
    hist = model.fit(xtr, ytr, validation_data=(xva, yva), epochs=epochs, batch_size=batch_size,
                     class_weight=class_weights(ytr, model.output_shape[-1]) if class_weight else None,
                     callbacks=[stop], verbose=verbose, shuffle=True)
    return len(hist.history["loss"]), float(max(hist.history["val_accuracy"]))


def train_cell(ds, family, budget, lr, split, out_dir, epochs=30, patience=5, batch_size=128,
               seed=0, include_other=False, balance_to=None, class_weight=True, verbose=1, k_flow=5,
               reverse=False):
    """Train one cell and write its results.json; returns the results dict."""
    tr, va, te = select(ds, split, include_other, balance_to, seed)
    for part, idx in (("training", tr), ("validation", va), ("test", te)):
        if not len(idx):
            raise CliError(f"the {split} split leaves no {part} packets of the model's classes "
                           f"(too few captures or flows for it)")
    classes = ds["classes"] if include_other else ds["classes"][:-1]
    n = len(classes)
    X, y = ds["X"], ds["label"]
    model, params, epochs_run, best_val, train_s = fit(
        ds, family, budget, lr, tr, va, n, epochs, patience, batch_size, seed, class_weight, verbose, reverse)

    probs = model.predict(view(family, X[te]), batch_size=1024, verbose=0)
    pred = probs.argmax(1)
    res = dict(family=family, budget=budget, params=int(params), lr=lr, split=split, seed=seed,
               classes=list(classes), n_train=len(tr), n_val=len(va), n_test=len(te),
               epochs=epochs_run, val_accuracy=best_val, train_seconds=round(train_s, 1),
               packet=scores(y[te], pred, n), include_other=include_other, balance=balance_to,
               cpu=cpu_model(), reverse=reverse)
    dec, _ = flow_decisions(probs, ds["flow"][te], ds["ts"][te], k_flow)
    res["flow_k"] = k_flow
    res["flow_decision_packets"] = scores(y[te], dec, n)  # packet-weighted, flow decisions
    uf, first = np.unique(ds["flow"][te], return_index=True)
    res["flow_decision_flows"] = scores(y[te][first], dec[first], n)  # flow-weighted
    res["keras_pps_batch1"] = keras_speed(model, view(family, X[te[:1]]))
    os.makedirs(out_dir, exist_ok=True)
    model.save(os.path.join(out_dir, "model.keras"))
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    return res


def main(a):
    ds = dataset.load(a.dataset)
    lrs = [a.lr] if a.lr is not None else LR_GRID[a.family]
    best = None
    for lr in lrs:
        name = cell_name(a.family, a.budget, lr, a.split, a.seed, a.reverse)
        res = train_cell(ds, a.family, a.budget, lr, a.split, os.path.join(a.out, name), epochs=a.epochs,
                         patience=a.patience, batch_size=a.batch_size, seed=a.seed,
                         include_other=a.include_other, balance_to=a.balance, verbose=0 if a.quiet else 1,
                         reverse=a.reverse)
        p = res["packet"]
        print(f"{name}: params={res['params']} val={res['val_accuracy']:.3f} test acc={p['accuracy']:.3f} "
              f"macro-F1={p['macro_f1']:.3f} flow-decision acc={res['flow_decision_packets']['accuracy']:.3f} "
              f"({res['epochs']} epochs, {res['train_seconds']:.0f}s)")
        if best is None or res["val_accuracy"] > best["val_accuracy"]:
            best = res
    if len(lrs) > 1:
        print(f"best learning rate on validation: {best['lr']:g}")
