"""What the cross-validation folds say about traffic never seen in training (issue 9).

    tc-daemon report --cv runs/cv --out docs/unseen-traffic

Reads the per-fold test probabilities that `tc-daemon crossval` saved and
applies the daemon's own decision rules to them: per packet; a flow's class
from the mean of its first k payload packets (the daemon's flow mode, k =
pipeline.flow_packets); progressive decisions (score packets until the mean is
confident, then stop); the reject threshold (calibrated on each fold's
validation part, as export does) that sends an unsure flow to `other`; and
temperature calibration, fitted for each fold on the other folds' held-out
packets. Figures are the mean and spread over folds and seeds, and each
variant is compared with the baseline fold by fold; accuracy and macro-F1
are over packets (or flows) of the model's classes, where `other` counts as
wrong, and the open-set figure is the share of the other applications'
packets that end up `other`.
"""
from __future__ import annotations

import glob
import json
import os

import numpy as np

from daemon.errors import CliError

from .export import calibrate_threshold
from .metrics import flow_decisions, from_confusion, scores

K_DAEMON = 3                        # pipeline.flow_packets' default
K_SWEEP = (1, 2, 3, 5, 8, 13, 20, 10**9)
CONFIDENT = (0.5, 0.7, 0.8, 0.9, 0.95)
PROGRESSIVE_CAP = 20
BASELINE = "mlp-100000"  # the paper's MLP at a budget every family can meet: the ablations' reference


def load_variant(path):
    with open(os.path.join(path, "variant.json")) as f:
        conf = json.load(f)
    fl = []
    for p in sorted(glob.glob(os.path.join(path, "s*-f*.npz"))):
        with np.load(p) as z:
            fl.append(dict(test=z["test"], probs=z["probs"].astype(np.float32), train_apps=z["train_apps"],
                           meta=json.loads(str(z["meta"]))))
    return conf, fl


class FoldView:
    """One fold's test packets sorted by flow and time, with running means of the probabilities."""

    def __init__(self, ds, fold, n_known):
        idx = fold["test"]
        order = np.lexsort((ds["ts"][idx], ds["flow"][idx]))
        self.idx = idx[order]
        self.probs = fold["probs"][order]
        self.y = ds["label"][self.idx]
        self.other = n_known
        f = self.flow = ds["flow"][self.idx]
        self.ts = ds["ts"][self.idx]
        self.starts = np.r_[0, np.flatnonzero(np.diff(f)) + 1]
        self.lens = np.diff(np.r_[self.starts, len(f)])
        self.flow_of = np.repeat(np.arange(len(self.starts)), self.lens)
        self.rank = np.arange(len(f)) - self.starts[self.flow_of]
        cs = np.cumsum(self.probs, 0, dtype=np.float64)
        base = np.where(self.starts[:, None] > 0, cs[np.maximum(self.starts - 1, 0)], 0.0)
        self.mean = (cs - base[self.flow_of]) / (self.rank + 1)[:, None]
        self.threshold = fold["meta"]["threshold"]
        self.known = self.y < n_known
        self.unseen_app = ~np.isin(ds["app"][self.idx], fold["train_apps"])
        self.flow_y = self.y[self.starts]

    def _labels(self, p, thr):
        c = p.argmax(1)
        if thr is not None:
            c = np.where(p.max(1) < thr, self.other, c)
        return c

    def per_packet(self, thr=None):
        return self._labels(self.probs, thr)

    def flow_decision(self, k, thr=None):
        """Per packet, its flow's class from the mean over the flow's first k payload packets
        (metrics.flow_decisions, the rule train.py scores with)."""
        dec, conf = flow_decisions(self.probs, self.flow, self.ts, k)
        return dec if thr is None else np.where(conf < thr, self.other, dec)

    def progressive(self, confident, cap=PROGRESSIVE_CAP, thr=None):
        """Decide at the first packet whose running mean reaches `confident` (or at the cap):
        the per-packet decision and the number of packets the model scored per flow."""
        last = np.minimum(self.lens, cap) - 1
        stop = (self.mean.max(1) >= confident) | (self.rank == last[self.flow_of])
        stop &= self.rank <= last[self.flow_of]
        hit = np.flatnonzero(stop)
        _, at = np.unique(self.flow_of[hit], return_index=True)  # each flow's earliest stop
        first = hit[at]
        return self._labels(self.mean[first], thr)[self.flow_of], self.rank[first] + 1

    def figures(self, pred):
        """Accuracy and macro-F1 over the model's classes, packet- and flow-weighted; open set."""
        n = self.other + 1
        k = self.known
        fk = self.flow_y < self.other
        pf = pred[self.starts]
        # macro-F1 over the classes among the true labels: the model's own (`other` counts as wrong)
        out = dict(packets=scores(self.y[k], pred[k], n), flows=scores(self.flow_y[fk], pf[fk], n))
        o = ~k
        out["open_set"] = float((pred[o] == self.other).mean()) if o.any() else None
        ou = o & self.unseen_app
        out["open_set_unseen_apps"] = float((pred[ou] == self.other).mean()) if ou.any() else None
        return out


TEMPERATURES = np.exp(np.linspace(np.log(0.1), np.log(30.0), 80))


def temper(p, t):
    """Probabilities at temperature t: softmax(log p / t), the same as dividing the logits by t."""
    q = np.log(np.maximum(p, 1e-7)) / t
    q = np.exp(q - q.max(1, keepdims=True))
    return q / q.sum(1, keepdims=True)


def fit_temperature(p, y):
    """The temperature under which the true labels are most likely (least log loss)."""
    rows = np.arange(len(y))
    return float(min(TEMPERATURES, key=lambda t: -np.log(np.maximum(temper(p, t)[rows, y], 1e-12)).mean()))


def ece(p, y, bins=10):
    """Expected calibration error: |confidence - accuracy| over 10 confidence bins, packet-weighted."""
    conf, right = p.max(1), p.argmax(1) == y
    b = np.minimum((conf * bins).astype(int), bins - 1)
    return float(sum(abs(conf[b == i].mean() - right[b == i].mean()) * (b == i).mean()
                     for i in range(bins) if (b == i).any()))


def calibrated(ds, folds, i):
    """Fold i with its probabilities recalibrated, and its reject threshold recalibrated, on the
    other folds of its seed: their test packets are held-out captures too, so temperature and
    threshold are fitted on what the model will meet, never on fold i itself."""
    seed = folds[i]["meta"]["seed"]
    n_out = folds[i]["probs"].shape[1]
    ps, ys = [], []
    for j, f in enumerate(folds):
        if j != i and f["meta"]["seed"] == seed:
            y = ds["label"][f["test"]]
            ok = y < n_out
            ps.append(f["probs"][ok])
            ys.append(y[ok])
    if not ps:
        return None
    p, y = np.concatenate(ps), np.concatenate(ys)
    if len(y) > 20000:
        pick = np.random.default_rng(0).choice(len(y), 20000, replace=False)
        p, y = p[pick], y[pick]
    t = fit_temperature(p, y)
    meta = dict(folds[i]["meta"], threshold=calibrate_threshold(temper(p, t), y), temperature=t)
    return dict(folds[i], probs=temper(folds[i]["probs"], t).astype(np.float32), meta=meta)


def evaluate(ds, conf, folds):
    """Every decision rule over every fold: {rule: [per-fold figures]}."""
    n_known = len(conf["classes"]) - 1
    res = {}

    def add(key, fig):
        res.setdefault(key, []).append(fig)

    for i, fold in enumerate(folds):
        cal = calibrated(ds, folds, i)
        if cal is not None:
            v = FoldView(ds, cal, n_known)
            fig = v.figures(v.flow_decision(K_DAEMON, v.threshold))
            n_out = cal["probs"].shape[1]
            y = ds["label"][fold["test"]]
            ok = y < n_out
            fig.update(temperature=cal["meta"]["temperature"], ece_before=ece(fold["probs"][ok], y[ok]),
                       ece_after=ece(cal["probs"][ok], y[ok]))
            add(f"flow k={K_DAEMON}+reject calibrated", fig)
        v = FoldView(ds, fold, n_known)
        add("packet", v.figures(v.per_packet()))
        add("packet+reject", v.figures(v.per_packet(v.threshold)))
        for k in K_SWEEP:
            add(f"flow k={k}", v.figures(v.flow_decision(k)))
        add(f"flow k={K_DAEMON}+reject", v.figures(v.flow_decision(K_DAEMON, v.threshold)))
        for c in CONFIDENT:
            pred, scored = v.progressive(c)
            fig = v.figures(pred)
            fig["scored_per_flow"] = float(scored.mean())
            add(f"progressive {c:g}", fig)
    return res


def summary(figs, what="packets", key="accuracy"):
    vals = [f[what][key] if what in ("packets", "flows") else f[what] for f in figs]
    vals = [x for x in vals if x is not None]
    return (float(np.mean(vals)), float(np.std(vals))) if vals else (float("nan"), float("nan"))


def fmt(ms, pct=True):
    m, s = ms
    if m != m:
        return "-"
    return f"{100 * m:.1f} ± {100 * s:.1f}" if pct else f"{m:.2f} ± {s:.2f}"


def print_variant(ds, path):
    conf, folds = load_variant(path)
    res = evaluate(ds, conf, folds)
    print(f"{os.path.basename(path)}: {len(folds)} folds x seeds, capture-disjoint")
    print(f"{'rule':<22}{'pkt acc %':>14}{'macro-F1':>13}{'flow acc %':>14}{'open set %':>14}")
    for rule in ("packet", "packet+reject", f"flow k={K_DAEMON}", f"flow k={K_DAEMON}+reject", "flow k=1000000000"):
        f = res[rule]
        print(f"{rule.replace('1000000000', 'all'):<22}{fmt(summary(f)):>14}"
              f"{fmt(summary(f, 'packets', 'macro_f1'), False):>13}{fmt(summary(f, 'flows')):>14}"
              f"{fmt(summary(f, 'open_set')):>14}")
    return conf, folds, res


THRESHOLDS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def threshold_curve(ds, conf, folds):
    """Flow decisions (k = K_DAEMON) under fixed reject thresholds: accuracy and open-set share."""
    n_known = len(conf["classes"]) - 1
    rows = {t: [] for t in THRESHOLDS}
    for fold in folds:
        v = FoldView(ds, fold, n_known)
        for t in THRESHOLDS:
            rows[t].append(v.figures(v.flow_decision(K_DAEMON, t)))
    return rows


def pooled_confusion(ds, conf, folds):
    """Flow decisions with the reject threshold, every fold's test packets summed."""
    n_known = len(conf["classes"]) - 1
    m = np.zeros((n_known + 1, n_known + 1), np.int64)
    for fold in folds:
        v = FoldView(ds, fold, n_known)
        np.add.at(m, (v.y, v.flow_decision(K_DAEMON, v.threshold)), 1)
    return m


def tls_hello_flows(ds):
    """Flow ids with a cleartext TLS ClientHello (record 0x16 0x03, handshake type 1) in a payload
    packet: where a byte model could read a server name. QUIC hides its name in encrypted
    Initial packets and most other protocols carry none."""
    X = ds["X"]
    hit = np.zeros(len(X), bool)
    for j in range(20, 80):  # the record starts after the TCP header, options included
        hit |= (X[:, j] == 0x16) & (X[:, j + 1] == 0x03) & (X[:, j + 5] == 0x01)
    return np.unique(ds["flow"][hit])


def corpus_limits(ds):
    """Per class: how concentrated it is. A class whose packets sit mostly in one capture
    group is, in the fold that tests that group, learned from the little that is left."""
    in_hello = np.isin(ds["flow"], tls_hello_flows(ds))
    rows = []
    for i, c in enumerate(ds["classes"][:-1]):
        sel = ds["label"] == i
        if not sel.any():
            rows.append(dict(cls=c, packets=0, flows=0, groups=0, top_group=0.0, top_flow=0.0, hello=0.0))
            continue
        g = np.bincount(ds["group"][sel])
        fl = np.unique(ds["flow"][sel], return_counts=True)[1]
        rows.append(dict(cls=c, packets=int(sel.sum()), flows=len(fl), groups=int((g > 0).sum()),
                         top_group=float(g.max() / sel.sum()), top_flow=float(fl.max() / sel.sum()),
                         hello=float(in_hello[sel].mean())))
    return rows


def _name(conf, path):
    return os.path.basename(path.rstrip("/"))


def build(cv_dir, out, dataset_path=None, log=print):
    import sys

    from . import dataset
    from .report import _plt, plot_matrix

    paths = sorted(p for p in glob.glob(os.path.join(cv_dir, "*")) if os.path.exists(os.path.join(p, "variant.json")))
    variants = []
    for p in paths:
        conf, folds = load_variant(p)
        if folds:
            variants.append((_name(conf, p), conf, folds))
    if not variants:
        raise SystemExit(f"report: no cross-validation runs under {cv_dir}")
    ds_path = dataset_path or variants[0][1]["dataset"]
    if not os.path.exists(ds_path):
        raise CliError(f"report: dataset {ds_path} not found (give it with --dataset)")
    ds = dataset.load(ds_path)
    figdir = out + "-figures"
    os.makedirs(figdir, exist_ok=True)
    rel = os.path.basename(figdir)
    results, md, calib_raw = {}, [], {}
    for name, conf, folds in variants:
        log(f"evaluating {name} ({len(folds)} folds)", file=sys.stderr)
        res = evaluate(ds, conf, folds)
        calib_raw[name] = [dict(temperature=f["temperature"], ece_before=f["ece_before"], ece_after=f["ece_after"])
                           for f in res.get(f"flow k={K_DAEMON}+reject calibrated", [])]
        meta = [f["meta"] for f in folds]
        results[name] = dict(conf=conf, folds=meta, rules={r: dict(
            accuracy=summary(v), macro_f1=summary(v, "packets", "macro_f1"), flow_accuracy=summary(v, "flows"),
            flow_macro_f1=summary(v, "flows", "macro_f1"), open_set=summary(v, "open_set"),
            open_set_unseen_apps=summary(v, "open_set_unseen_apps"),
            scored_per_flow=float(np.mean([f["scored_per_flow"] for f in v])) if "scored_per_flow" in v[0] else None,
            per_fold=[f["packets"]["accuracy"] for f in v]) for r, v in res.items()},
            calibration=calib_raw[name],
            thresholds={str(t): dict(accuracy=summary(v), macro_f1=summary(v, "packets", "macro_f1"),
                                     open_set=summary(v, "open_set"))
                        for t, v in threshold_curve(ds, conf, folds).items()})
    seeds = sorted({m["seed"] for _, _, fl in variants for m in (f["meta"] for f in fl)})
    md += ["# Accuracy on traffic never seen in training", "",
           f"Generated by `tc-daemon report --cv {cv_dir} --out {out}` from {len(variants)} model variants, "
           f"each cross-validated over {variants[0][1]['folds']} capture-disjoint folds (seeds {', '.join(map(str, seeds))}).",
           ""]
    notes = out + "-notes.md"
    if os.path.exists(notes):
        with open(notes) as f:
            md += [f.read().rstrip(), ""]
    kd = f"flow k={K_DAEMON}"
    md += ["## The variants", "",
           f"Each figure is the mean ± standard deviation over folds (and seeds). *per packet*: every packet "
           f"classified alone (the paper's measure). *flow*: each flow decided by the mean of its first {K_DAEMON} "
           "payload packets, every packet of the flow counted with that decision (the daemon's flow mode). "
           "*+reject*: flows whose mean confidence is under the threshold calibrated on the fold's validation part "
           "become `other`, as the daemon counts them. Accuracy is packet-weighted over packets of the model's "
           "classes; *flows* is flow-weighted; *open set* is the share of the packets of applications outside "
           "the classes that end up `other`. Size and speed: fold 0's model exported to int8 TFLite, the "
           "interpreter's invoke alone on one thread (the daemon's own path, features and Python included, is "
           "what `tc-daemon bench` measures).",
           "",
           "| variant | params | int8 KiB | pkt/s @1 | pkt/s @64 | int8 agree | per packet | flow | flow macro-F1 "
           "| flows | flows macro-F1 | flow+reject | macro-F1 | open set | train s/fold | command |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, conf, folds in variants:
        r = results[name]["rules"]
        m0 = folds[0]["meta"]
        g = lambda k, fmt_: fmt_.format(m0[k]) if k in m0 else "-"
        cmd = (f"`tc-daemon crossval -d {os.path.basename(conf['dataset'])} --family {conf['family']} "
               f"--budget {conf['budget']} --lr {conf['lr']:g} --seeds {','.join(map(str, sorted({f['meta']['seed'] for f in folds})))}"
               + (" --reverse" if conf.get("reverse") else "") + (" --include-other" if conf["include_other"] else "")
               + ("" if conf["class_weight"] else " --no-class-weight") + (" --augment" if conf.get("augment") else "")
               + (f" --epochs {conf['epochs']}" if conf.get("epochs", 30) != 30 else "") + "`")
        md.append(f"| {name} | {m0['params']:,} | {m0['tflite_bytes'] / 1024:.0f} | {g('pps_batch1', '{:,.0f}')} | "
                  f"{g('pps_batch64', '{:,.0f}')} | {g('int8_agreement', '{:.2f}')} | " if 'tflite_bytes' in m0 else
                  f"| {name} | {m0['params']:,} | - | - | - | - | ")
        md[-1] += (f"{fmt(r['packet']['accuracy'])} | {fmt(r[kd]['accuracy'])} | {fmt(r[kd]['macro_f1'], False)} | "
                   f"{fmt(r[kd]['flow_accuracy'])} | {fmt(r[kd]['flow_macro_f1'], False)} | "
                   f"{fmt(r[kd + '+reject']['accuracy'])} | "
                   f"{fmt(r[kd + '+reject']['macro_f1'], False)} | {fmt(r[kd + '+reject']['open_set'])} | "
                   f"{np.mean([f['meta']['train_seconds'] for f in folds]):.0f} | {cmd} |")
    md += [""]

    # paired: the same folds (seed, fold) for every variant, so an idea is judged against the baseline
    # fold by fold; the spread between folds is mostly which captures are tested, common to both
    base = BASELINE if BASELINE in results else next(iter(results))

    def per_fold(n):
        v = results[n]
        return {(m["seed"], m["fold"]): a for m, a in zip(v["folds"], v["rules"][kd]["per_fold"])}
    md += [f"## Each idea against {base}, fold by fold", "",
           f"Flow decisions (k = {K_DAEMON}, no reject): the difference in packet-weighted accuracy on the same "
           "folds (same seed, same test captures), its mean ± standard deviation, and in how many folds the "
           "variant was better.", "", "| variant | folds | difference, points | better in |", "|---|---:|---:|---:|"]
    pb = per_fold(base)
    for name in results:
        if name == base:
            continue
        pv = per_fold(name)
        shared = sorted(set(pv) & set(pb))
        d = np.array([pv[k] - pb[k] for k in shared])
        if len(d):
            md.append(f"| {name} | {len(d)} | {100 * d.mean():+.1f} ± {100 * d.std():.1f} | {(d > 0).sum()} of {len(d)} |")
    md += [""]

    # the target of issue 9, against the best variant by flow decisions with the reject threshold
    best = max(results, key=lambda n: results[n]["rules"][kd + "+reject"]["accuracy"][0])
    rb = results[best]["rules"][kd + "+reject"]
    md += ["## Against the target", "",
           "| measure (capture-disjoint, flow decisions, reject threshold) | target | best variant "
           f"({best}) |", "|---|---:|---:|",
           f"| packet-weighted accuracy | 80 % | {fmt(rb['accuracy'])} % |",
           f"| macro-F1 | 0.70 | {fmt(rb['macro_f1'], False)} |",
           f"| out-of-set packets labelled `other` | 90 % | {fmt(rb['open_set'])} % |",
           f"| the same, applications absent from the fold's training part | | {fmt(rb['open_set_unseen_apps'])} % |", ""]

    # k sweep
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    md += ["## How many packets decide a flow (k)", "",
           "Flow decisions from the mean of the first k payload packets, no reject threshold; *all*: every "
           "payload packet of the flow (what an offline tool could do, not a live one).", "",
           "| variant | " + " | ".join("all" if k > 1000 else f"k={k}" for k in K_SWEEP) + " |",
           "|---|" + "---:|" * len(K_SWEEP)]
    for name in results:
        r = results[name]["rules"]
        ys = [r[f"flow k={k}"]["accuracy"][0] for k in K_SWEEP]
        md.append(f"| {name} | " + " | ".join(f"{100 * y:.1f}" for y in ys) + " |")
        ax.plot(range(len(K_SWEEP)), [100 * y for y in ys], marker="o", label=name)
    ax.set_xticks(range(len(K_SWEEP)), ["all" if k > 1000 else str(k) for k in K_SWEEP])
    ax.set_xlabel("payload packets per flow decision (k)")
    ax.set_ylabel("packet-weighted accuracy, %")
    ax.set_title("Capture-disjoint accuracy against k", fontsize=9)
    ax.grid(alpha=.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(figdir, "k-sweep.png"), dpi=110)
    plt.close(fig)
    md += ["", f"![k sweep]({rel}/k-sweep.png)", ""]

    md += ["## Progressive decisions", "",
           f"Score a flow's packets until the running mean's top probability reaches the level, or "
           f"{PROGRESSIVE_CAP} packets, then stop running the model for it: accuracy (packet-weighted) "
           "and the packets the model scored per flow.", "",
           "| variant | " + " | ".join(f"≥ {c:g}" for c in CONFIDENT) + " |", "|---|" + "---:|" * len(CONFIDENT)]
    for name in results:
        r = results[name]["rules"]
        md.append(f"| {name} | " + " | ".join(
            f"{100 * r[f'progressive {c:g}']['accuracy'][0]:.1f} % ({r[f'progressive {c:g}']['scored_per_flow']:.1f})"
            for c in CONFIDENT) + " |")
    md += [""]

    kc = kd + "+reject calibrated"
    md += ["## Calibration", "",
           "Temperature scaling (probabilities p -> softmax(log p / T)), with T and then the reject threshold "
           "fitted, for each fold, on the other folds' held-out packets of the same seed (captures the fold's "
           "model never saw either, so nothing is fitted on the fold itself). ECE: expected calibration "
           "error per packet, before and after. Then the flow decisions with the recalibrated threshold.", "",
           "| variant | T | ECE before | ECE after | flow+reject | macro-F1 | open set |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, conf, folds in variants:
        figs = results[name]["rules"].get(kc)
        raw = calib_raw.get(name)
        if not figs or not raw:
            continue
        md.append(f"| {name} | {np.mean([f['temperature'] for f in raw]):.2f} | "
                  f"{np.mean([f['ece_before'] for f in raw]):.3f} | {np.mean([f['ece_after'] for f in raw]):.3f} | "
                  f"{fmt(figs['accuracy'])} | {fmt(figs['macro_f1'], False)} | {fmt(figs['open_set'])} |")
    md += [""]

    fig, ax = plt.subplots(figsize=(6, 4.5))
    md += ["## The reject threshold: accuracy against the open set", "",
           f"Flow decisions (k = {K_DAEMON}) with a fixed threshold: the share of the model's classes still "
           "right against the share of other applications' packets sent to `other`.", "",
           "| variant | " + " | ".join(f"t={t:g}" for t in THRESHOLDS) + " |", "|---|" + "---|" * len(THRESHOLDS)]
    for name in results:
        th = results[name]["thresholds"]
        acc = [100 * th[str(t)]["accuracy"][0] for t in THRESHOLDS]
        ops = [100 * th[str(t)]["open_set"][0] for t in THRESHOLDS]
        md.append(f"| {name} | " + " | ".join(f"{a:.0f} / {o:.0f}" for a, o in zip(acc, ops)) + " |")
        ax.plot(ops, acc, marker="o", label=name)
    md += ["", "(accuracy % / open set %)", ""]
    ax.set_xlabel("out-of-set packets labelled other, %")
    ax.set_ylabel("accuracy on the model's classes, %")
    ax.set_title(f"Reject threshold swept {THRESHOLDS[0]:g}-{THRESHOLDS[-1]:g}, flow decisions", fontsize=9)
    ax.grid(alpha=.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(figdir, "open-set.png"), dpi=110)
    plt.close(fig)
    md += [f"![open set]({rel}/open-set.png)", ""]

    for name, conf, folds in variants:
        cm = pooled_confusion(ds, conf, folds)
        plot_matrix(cm.astype(float), ds["classes"], ds["classes"],
                    f"{name}: flow decisions + reject, all folds' test packets",
                    os.path.join(figdir, f"confusion-{name}.png"))
        if name == best:
            m = cm
    known = m.copy()
    known[-1] = 0  # the model's classes only; the `other` row (the open set) is its own figure
    f1 = from_confusion(known)["f1"]
    recall = np.diag(m)[:-1] / np.maximum(m[:-1].sum(1), 1)
    prec_all = np.diag(m)[:-1] / np.maximum(m[:, :-1].sum(0), 1)
    md += ["## Where the best variant goes wrong", "", f"![confusion]({rel}/confusion-{best}.png)", "",
           "The other variants' confusion matrices: " + ", ".join(
               f"[{n}]({rel}/confusion-{n}.png)" for n, _, _ in variants if n != best) + ".", "",
           "Per class, all folds' test packets pooled, flow decisions with the reject threshold: recall, F1 "
           "among the model's classes, and precision once the other applications' packets are counted too "
           "(when the daemon says WhatsApp, how often it is). Then how concentrated the class is in the corpus: "
           "*top group* is the share of its packets in its largest capture group, which the model never saw "
           "in the fold that tests it; *top flow*, the share in its largest flow; *TLS hello*, the share in flows "
           "with a cleartext TLS ClientHello, where a server name could be read at all.", "",
           "| class | recall | F1 | precision, all traffic | packets | flows | capture groups | top group | top flow "
           "| TLS hello |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, row in enumerate(corpus_limits(ds)):
        md.append(f"| {row['cls']} | {recall[i]:.2f} | {f1[i]:.2f} | {prec_all[i]:.2f} | {row['packets']:,} | "
                  f"{row['flows']} | {row['groups']} | {100 * row['top_group']:.0f} % | {100 * row['top_flow']:.0f} % | "
                  f"{100 * row['hello']:.0f} % |")
    md += [""]

    md += ["## Spread across folds", "", "Per-packet accuracy of the flow decisions (k = "
           f"{K_DAEMON}, no reject) in each fold, in run order (seed, fold).", ""]
    for name in results:
        pf = results[name]["rules"][kd]["per_fold"]
        md.append(f"- {name}: " + ", ".join(f"{100 * x:.0f}" for x in pf) + " %")
    md += [""]
    with open(out + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    with open(out + "-results.json", "w") as f:
        json.dump(results, f, indent=1)
    log(f"wrote {out}.md, {figdir}/ and {out}-results.json", file=sys.stderr)
