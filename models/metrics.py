"""Classification figures in numpy (no scikit-learn needed to read a result)."""
from __future__ import annotations

import numpy as np


def confusion(y_true, y_pred, n):
    m = np.zeros((n, n), np.int64)
    np.add.at(m, (y_true, y_pred), 1)
    return m


def scores(y_true, y_pred, n, weights=None) -> dict:
    """accuracy, macro-F1 over the classes present in y_true, per-class F1, confusion."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    w = np.ones(len(y_true)) if weights is None else np.asarray(weights, float)
    m = np.zeros((n, n))
    np.add.at(m, (y_true, y_pred), w)
    return from_confusion(m)


def from_confusion(m) -> dict:
    """scores() from a confusion matrix (rows: true class, columns: predicted)."""
    m = np.asarray(m, float)
    n = len(m)
    tp = np.diag(m)
    prec = np.divide(tp, m.sum(0), out=np.zeros(n), where=m.sum(0) > 0)
    rec = np.divide(tp, m.sum(1), out=np.zeros(n), where=m.sum(1) > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros(n), where=(prec + rec) > 0)
    present = m.sum(1) > 0
    return dict(accuracy=float(tp.sum() / max(m.sum(), 1e-12)),
                macro_f1=float(f1[present].mean()) if present.any() else 0.0,
                f1=[float(x) for x in f1], confusion=m.astype(np.int64).tolist())


def flow_decisions(probs, flow, order, k):
    """Per packet, its flow's decision from the mean probabilities of the flow's first k
    payload packets (in time order), as the daemon decides in flow mode."""
    probs, flow = np.asarray(probs), np.asarray(flow)
    idx = np.lexsort((order, flow))
    f_sorted = flow[idx]
    starts = np.r_[0, np.flatnonzero(np.diff(f_sorted)) + 1]
    rank = np.arange(len(idx)) - np.repeat(starts, np.diff(np.r_[starts, len(idx)]))
    use = idx[rank < k]
    uf, inv = np.unique(flow[use], return_inverse=True)
    sums = np.zeros((len(uf), probs.shape[1]))
    np.add.at(sums, inv, probs[use])
    dec = sums.argmax(1)
    conf = sums.max(1) / np.bincount(inv)
    pos = np.searchsorted(uf, flow)
    return dec[pos], conf[pos]
