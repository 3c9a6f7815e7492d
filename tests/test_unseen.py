"""The decision rules of the unseen-traffic report, against figures worked out by hand.

models/unseen.py turns saved per-packet probabilities into what the daemon
would count (flow decisions over the first k packets, progressive decisions,
the reject threshold, the open-set share); a slip there would misstate every
figure of docs/unseen-traffic.md, so each rule is checked on a small fold
whose answers are computed here independently, in plain loops.
"""
import numpy as np

from daemon.features import FLOW_PACKETS, first_packets, flow_shape
from models import dataset, unseen

# 3 classes of the model (0, 1, 2) + other (3); four flows, packets deliberately out of time order
FLOW = np.array([7, 7, 7, 9, 9, 4, 4, 4, 4, 5])
TS = np.array([3.0, 1.0, 2.0, 5.0, 6.0, 1.0, 2.0, 3.0, 4.0, 1.0])
LABEL = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
APP = np.array([1, 1, 1, 2, 2, 3, 3, 3, 3, 8])
PROBS = np.array([
    [0.1, 0.8, 0.1],   # flow 7, t=3
    [0.9, 0.05, 0.05],  # flow 7, t=1 (first)
    [0.6, 0.3, 0.1],   # flow 7, t=2
    [0.2, 0.7, 0.1],   # flow 9
    [0.3, 0.3, 0.4],
    [0.4, 0.35, 0.25],  # flow 4: unsure at first, then class 2
    [0.1, 0.2, 0.7],
    [0.1, 0.1, 0.8],
    [0.0, 0.1, 0.9],
    [0.5, 0.3, 0.2],   # flow 5: an application outside the classes
], np.float32)


def _view(threshold=0.5):
    ds = dict(ts=TS, flow=FLOW, label=LABEL, app=APP)
    fold = dict(test=np.arange(len(FLOW)), probs=PROBS, train_apps=np.array([1, 2, 3]),
                meta=dict(threshold=threshold))
    return unseen.FoldView(ds, fold, n_known=3)


def _by_hand(k, thr=None, progressive=None, cap=20):
    """Per original packet: its flow's class, recomputed with plain loops."""
    out, scored = {}, {}
    for f in set(FLOW):
        rows = sorted(np.flatnonzero(FLOW == f), key=lambda i: TS[i])
        if progressive is None:
            use = rows[:k]
        else:
            use = rows[:cap]
            for j in range(1, min(len(rows), cap) + 1):
                if PROBS[rows[:j]].mean(0).max() >= progressive:
                    use = rows[:j]
                    break
        mean = PROBS[use].mean(0)
        c = int(mean.argmax())
        if thr is not None and mean.max() < thr:
            c = 3
        for i in rows:
            out[i] = c
        scored[f] = len(use)
    return out, scored


def test_flow_decisions_match_a_hand_count():
    v = _view()
    for k in (1, 2, 3, 10):
        want, _ = _by_hand(k)
        got = v.flow_decision(k)
        assert [got[list(v.idx).index(i)] for i in range(len(FLOW))] == [want[i] for i in range(len(FLOW))], k
    want, _ = _by_hand(2, thr=0.5)
    got = v.flow_decision(2, 0.5)
    assert [got[list(v.idx).index(i)] for i in range(len(FLOW))] == [want[i] for i in range(len(FLOW))]


def test_progressive_stops_at_the_first_confident_mean():
    v = _view()
    for level in (0.45, 0.65, 0.95):  # no mean sits exactly on a level (float32 vs float64)
        want, scored = _by_hand(None, progressive=level)
        got, n = v.progressive(level)
        assert [got[list(v.idx).index(i)] for i in range(len(FLOW))] == [want[i] for i in range(len(FLOW))]
        assert sorted(n) == sorted(scored.values())


def test_figures_weigh_packets_and_flows_and_count_the_open_set():
    v = _view()
    # k=1 by hand: flow 7 -> 0 (right, 3 packets), 9 -> 1 (right, 2), 4 -> 0 (wrong, 4), 5 -> 0 (other app)
    fig = v.figures(v.flow_decision(1))
    assert np.isclose(fig["packets"]["accuracy"], 5 / 9)
    assert np.isclose(fig["flows"]["accuracy"], 2 / 3)
    assert fig["open_set"] == 0.0
    # with the threshold 0.45: flow 4's first packet (0.4) and flow 5's (0.5 >= 0.45, stays 0)
    fig = v.figures(v.flow_decision(1, 0.45))
    assert np.isclose(fig["packets"]["accuracy"], 5 / 9) and fig["open_set"] == 0.0
    fig = v.figures(v.flow_decision(1, 0.55))  # now flow 5 is sent to other as well
    assert fig["open_set"] == 1.0 and fig["open_set_unseen_apps"] == 1.0


def test_folds_keep_capture_groups_whole():
    rng = np.random.default_rng(1)
    group = np.repeat(np.arange(12), 50)
    label = rng.integers(0, 4, len(group))
    f = dataset.group_split(group, label, seed=0, fractions=[0.2] * 5)
    assert set(f) == set(range(5))
    for g in range(12):
        assert len(set(f[group == g])) == 1


def test_flow_shape_signs_sizes_by_direction_and_pads():
    # two flows: 3 packets (c2s 100 B, s2c 1480 B at +10 ms, c2s 0 B at +1 s), then 1 packet
    pl = np.array([100, 1480, 0, 50])
    d = np.array([0, 1, 0, 1])
    ts = np.array([0.0, 0.010, 1.010, 7.0])
    x = flow_shape(pl, d, ts, np.array([0, 3])).reshape(2, FLOW_PACKETS, 2)
    assert np.allclose(x[0, :3, 0], [100 / 1480, -1.0, 0.0])
    assert np.allclose(x[0, :3, 1], [0.0, np.log1p(10.0) / 10, np.log1p(1000.0) / 10])
    assert np.allclose(x[1, 0], [-50 / 1480, 0.0]) and not x[0, 3:].any() and not x[1, 1:].any()


def test_first_packets_puts_a_flows_first_rows_side_by_side():
    x = np.arange(5, dtype=np.uint8)[:, None].repeat(1480, 1)  # row i is all i
    out = first_packets(x, np.array([0, 4]), k=3).reshape(2, 3, 1480)
    assert (out[0, :, 0] == [0, 1, 2]).all()          # flow 0: rows 0..3, the first three kept
    assert out[1, 0, 0] == 4 and not out[1, 1:].any()  # flow 1: one row, then zero padding


def test_temperature_fitting_softens_an_overconfident_model():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 3000)
    right = rng.random(3000) < 0.5                      # right half the time ...
    pred = np.where(right, y, (y + 1) % 3)
    p = np.full((3000, 3), 0.01)
    p[np.arange(3000), pred] = 0.98                     # ... yet 98 % sure every time
    assert np.allclose(unseen.temper(p, 1.0), p / p.sum(1, keepdims=True), atol=1e-6)
    t = unseen.fit_temperature(p, y)
    assert t > 2
    assert unseen.ece(unseen.temper(p, t), y) < unseen.ece(p, y) - 0.3  # 0.48 before
    assert np.isclose(unseen.ece(p, y), 0.98 - right.mean(), atol=1e-9)
