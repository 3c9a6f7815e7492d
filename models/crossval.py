"""Capture-disjoint cross-validation: a gateway only ever meets captures it was not trained on.

    tc-daemon crossval -d ds.npz --family cnn --budget 100000 --lr 1e-3 --folds 5 --seeds 0,1 --out runs/cv

Capture groups (near-copy captures kept together) are dealt into K folds,
stratified by class (dataset.group_split). Fold f is the test part, fold f+1
the validation part (early stopping, reject threshold), the other folds train.
Every fold saves its model's probabilities for all of its test packets, the
`other` ones included, so the decision rules (flow decisions over the first k
packets, progressive decisions, the reject threshold) are measured afterwards
by models/unseen.py without retraining. One variant per --name; finished folds
are skipped, so an interrupted run picks up where it stopped.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from daemon.errors import CliError
from daemon.features import as_flat, first_packets, flow_shape

from . import dataset, zoo
from .export import calibrate_threshold
from .train import fit, fit_keras, view

FLOW_FAMILIES = ("flowmlp", "flowbytes")  # families that read a flow, not one packet: one row per flow


def folds(ds, k: int, seed: int) -> np.ndarray:
    """Fold number per packet: whole capture groups, every class spread over the folds."""
    return dataset.group_split(ds["group"], ds["label"], seed, fractions=[1.0 / k] * k)


def flow_rows(ds, idx, family):
    """One row per flow among the packets idx: (flow ids, the family's input, labels).
    flowmlp reads the flow's shape (sizes, directions, gaps); flowbytes its first packets' bytes."""
    order = idx[np.lexsort((ds["ts"][idx], ds["flow"][idx]))]
    f = ds["flow"][order]
    starts = np.r_[0, np.flatnonzero(np.diff(f)) + 1]
    if family == "flowbytes":
        x = as_flat(first_packets(ds["X"][order], starts))
    else:
        x = flow_shape(ds["payload_len"][order], ds["direction"][order], ds["ts"][order], starts)
    return f[starts], x, ds["label"][order][starts]


def _int8_figures(model, family, x_rep, x_test, keras_probs):
    """Size, batch-1 and batch-64 packets/s and argmax agreement of the int8 TFLite export."""
    from ai_edge_litert.interpreter import Interpreter

    from .export import convert
    from .speed import _rate

    blob = convert(model, "int8", x_rep)
    it = Interpreter(model_content=blob, num_threads=1)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    s_in, z_in = inp["quantization"]
    s_out, z_out = out["quantization"]

    def run(x):
        q = np.clip(np.round(x / s_in + z_in), -128, 127).astype(np.int8)
        it.resize_tensor_input(inp["index"], q.shape)
        it.allocate_tensors()
        it.set_tensor(inp["index"], q)
        it.invoke()
        return (it.get_tensor(out["index"]).astype(np.float32) - z_out) * s_out

    probs = np.concatenate([run(x_test[i:i + 256]) for i in range(0, len(x_test), 256)])
    res = dict(tflite_bytes=len(blob), int8_agreement=float((probs.argmax(1) == keras_probs.argmax(1)).mean()))
    for b in (1, 64):
        x = x_test[:b] if len(x_test) >= b else np.repeat(x_test[:1], b, 0)
        run(x)  # sizes the interpreter for b and sets the input; then the invoke alone is timed
        res[f"pps_batch{b}"] = _rate(it.invoke, b)
    return res


def run_fold(ds, a, fold_of, f, seed, out_path):
    K = a.folds
    other = len(ds["classes"]) - 1
    y = ds["label"]
    test_all = np.flatnonzero(fold_of == f)
    val_all = np.flatnonzero(fold_of == (f + 1) % K)
    train_all = np.flatnonzero((fold_of != f) & (fold_of != (f + 1) % K))
    known = (lambda i: i) if a.include_other else (lambda i: i[y[i] != other])
    tr, va = known(train_all), known(val_all)
    if not len(tr) or not len(va):
        raise CliError("no training or validation packets of the model's classes (too few capture groups)")
    n = other + 1 if a.include_other else other
    if a.family in FLOW_FAMILIES:
        sub = {}
        for part, idx in (("tr", tr), ("va", va), ("te", test_all)):
            sub[part] = flow_rows(ds, idx, a.family)
        t0 = time.time()
        model, params = zoo.build(a.family, a.budget, n, seed)
        epochs_run, best_val = fit_keras(model, a.lr, sub["tr"][1], sub["tr"][2], sub["va"][1], sub["va"][2],
                                         a.epochs, a.patience, 64, not a.no_class_weight)
        secs = time.time() - t0
        fp = model.predict(sub["te"][1], batch_size=1024, verbose=0)
        probs = fp[np.searchsorted(sub["te"][0], ds["flow"][test_all])]
        v_probs, v_y = model.predict(sub["va"][1], batch_size=1024, verbose=0), sub["va"][2]
        x_rep, x_test = sub["tr"][1][:500], sub["te"][1]
        k_test = fp
    else:
        model, params, epochs_run, best_val, secs = fit(
            ds, a.family, a.budget, a.lr, tr, va, n, a.epochs, a.patience, a.batch_size, seed,
            not a.no_class_weight, 0, a.reverse, a.augment)
        X = ds["X"]
        probs = model.predict(view(a.family, X[test_all]), batch_size=512, verbose=0)
        v_probs, v_y = model.predict(view(a.family, X[va]), batch_size=512, verbose=0), y[va]
        rng = np.random.default_rng(seed)
        x_rep = view(a.family, X[rng.choice(tr, min(300, len(tr)), replace=False)])
        x_test, k_test = view(a.family, X[test_all[:2000]]), probs[:2000]
    meta = dict(fold=f, seed=seed, params=int(params), epochs=epochs_run, val_accuracy=best_val,
                train_seconds=round(secs, 1), n_train=len(tr), n_val=len(va), n_test=len(test_all),
                threshold=calibrate_threshold(v_probs, v_y))
    if f == 0 and seed == a.seed_list[0] and not a.no_tflite:
        meta.update(_int8_figures(model, a.family, x_rep, x_test, k_test))
    train_apps = np.unique(ds["app"][train_all])
    np.savez_compressed(out_path, test=test_all.astype(np.int32), probs=probs.astype(np.float16),
                        train_apps=train_apps.astype(np.int16), meta=json.dumps(meta))
    return meta


def main(a):
    ds = dataset.load(a.dataset)
    a.seed_list = [int(s) for s in str(a.seeds).split(",")]
    name = a.name or f"{a.family}{'-rev' if a.reverse else ''}-{a.budget}" + \
        ("-other" if a.include_other else "") + ("-nocw" if a.no_class_weight else "") + \
        ("-aug" if a.augment else "")
    out = os.path.join(a.out, name)
    os.makedirs(out, exist_ok=True)
    conf = dict(family=a.family, budget=a.budget, lr=a.lr, reverse=a.reverse, include_other=a.include_other,
                augment=a.augment,
                class_weight=not a.no_class_weight, folds=a.folds, epochs=a.epochs, patience=a.patience,
                classes=ds["classes"], dataset=os.path.abspath(a.dataset))
    with open(os.path.join(out, "variant.json"), "w") as fh:
        json.dump(conf, fh, indent=1)
    jobs = [(s, f) for s in a.seed_list for f in range(a.folds)]
    t_start, done = time.time(), 0
    for i, (seed, f) in enumerate(jobs):
        path = os.path.join(out, f"s{seed}-f{f}.npz")
        if os.path.exists(path):
            print(f"[{i + 1}/{len(jobs)}] {name} seed {seed} fold {f}: done before, skipped", file=sys.stderr)
            continue
        try:
            meta = run_fold(ds, a, folds(ds, a.folds, seed), f, seed, path)
        except CliError as e:  # a fold of a small dataset may hold no class at all: say so, go on
            print(f"[{i + 1}/{len(jobs)}] {name} seed {seed} fold {f}: skipped: {e}", file=sys.stderr)
            continue
        done += 1
        eta = (time.time() - t_start) / done * (len(jobs) - i - 1)
        print(f"[{i + 1}/{len(jobs)}] {name} seed {seed} fold {f}: {meta['params']} params, "
              f"{meta['epochs']} epochs, val {meta['val_accuracy']:.3f}, {meta['train_seconds']:.0f} s"
              f" (about {eta / 60:.0f} min left)", file=sys.stderr, flush=True)
    from . import unseen
    if not any(n.endswith(".npz") for n in os.listdir(out)):
        raise CliError(f"crossval: no fold of {name} could be trained")
    unseen.print_variant(ds, out)
