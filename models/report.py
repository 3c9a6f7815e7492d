"""Tables and plots from sweep results, in the manner of the paper's figures 1-8.

    tc-daemon report --runs runs/default --out docs/paper-reproduction

Writes <out>.md beside a folder of PNGs and a results JSON with every cell.
"""
from __future__ import annotations

import glob
import json
import os
import sys

import numpy as np

PAPER = {"lstm": "86.5-91 %", "mlp": "66.8-70.5 %", "svm": "63 %"}
PAPER_PPS = {"lstm": "20-24", "mlp": "25.5-26.6", "svm": "3,846"}
SPLIT_TITLE = {"random": "random packet split (the paper's protocol)", "flow": "split by flow",
               "capture": "split by capture group (never-seen captures)"}


def load_cells(runs):
    cells = []
    for p in sorted(glob.glob(os.path.join(runs, "*", "results.json"))):
        with open(p) as f:
            r = json.load(f)
        if r.get("reverse"):
            continue  # the backwards-reading LSTM is the shipped models' variant (zoo.build), not the paper's
        r["dir"] = os.path.dirname(p)
        sp = os.path.join(r["dir"], "speed.json")
        if os.path.exists(sp):
            with open(sp) as f:
                r["speed"] = json.load(f)
        cells.append(r)
    return cells


def chosen(cells):
    """Per (family, budget, split): the cell with the learning rate chosen on validation (random split)."""
    best_lr = {}
    for r in cells:
        if r["split"] == "random":
            k = (r["family"], r["budget"])
            if k not in best_lr or r["val_accuracy"] > best_lr[k][1]:
                best_lr[k] = (r["lr"], r["val_accuracy"])
    out = {}
    for r in cells:
        k = (r["family"], r["budget"])
        if k in best_lr and abs(r["lr"] - best_lr[k][0]) < 1e-12:
            out[(r["family"], r["budget"], r["split"])] = r
    return out


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_accuracy(sel, split, path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for fam, marker in (("lstm", "o"), ("mlp", "s")):
        pts = sorted((r["params"], r["packet"]["accuracy"]) for (f, b, s), r in sel.items() if f == fam and s == split)
        if pts:
            ax.plot(*zip(*pts), marker=marker, label=fam.upper())
    svm = [r for (f, b, s), r in sel.items() if f == "svm" and s == split]
    if svm:
        ax.axhline(svm[0]["packet"]["accuracy"], color="gray", ls="--", label=f"linear SVM ({svm[0]['params']} params)")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("test accuracy (per packet)")
    ax.set_title(f"Accuracy against parameters, {SPLIT_TITLE[split]}", fontsize=9)
    ax.grid(alpha=.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_speed_params(sel, path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for fam, marker in (("lstm", "o"), ("mlp", "s")):
        rs = sorted((r for (f, b, s), r in sel.items() if f == fam and s == "random" and "speed" in r),
                    key=lambda r: r["params"])
        if rs:
            ax.plot([r["params"] for r in rs], [r["speed"]["keras"]["1"] for r in rs], marker=marker, ls="--",
                    label=f"{fam.upper()} Keras predict")
            ax.plot([r["params"] for r in rs], [r["speed"]["tflite"]["1"] for r in rs], marker=marker,
                    label=f"{fam.upper()} TFLite int8")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("packets/s at batch 1")
    ax.set_title("Speed against parameters (one packet per call)", fontsize=9)
    ax.grid(alpha=.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_twin(sel, fam, path):
    plt = _plt()
    rs = sorted((r for (f, b, s), r in sel.items() if f == fam and s == "random"), key=lambda r: r["params"])
    if not rs:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["params"] for r in rs], [r["packet"]["accuracy"] for r in rs], "o-", color="C0")
    ax.set_ylabel("accuracy (random split)", color="C0")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax2 = ax.twinx()
    sp = [r for r in rs if "speed" in r]
    if sp:
        ax2.plot([r["params"] for r in sp], [r["speed"]["tflite"]["1"] for r in sp], "s-", color="C1")
    ax2.set_ylabel("TFLite packets/s at batch 1", color="C1")
    ax.set_title(f"{fam.upper()}: accuracy and speed against parameters", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_batch(rs, path, title):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rs:
        b = sorted(int(k) for k in r["speed"]["tflite"])
        ax.plot(b, [r["speed"]["tflite"][str(k)] for k in b], "o-", label=f"{r['family'].upper()} {r['params']:,} TFLite")
        ax.plot(b, [r["speed"]["keras"][str(k)] for k in b], "o--", label=f"{r['family'].upper()} {r['params']:,} Keras")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("packets/s")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(r, path):
    plot_matrix(np.array(r["packet"]["confusion"], float), r["classes"], r["classes"],
                f"{r['family'].upper()} {r['params']:,} params, {r['split']} split: "
                f"accuracy {r['packet']['accuracy']:.3f}", path)


def plot_matrix(m, rows, cols, title, path):
    """A confusion matrix, each row normalised to the share of its true class."""
    plt = _plt()
    m = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("nDPI label")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build(runs, out, measure_speed=True, log=print):
    cells = load_cells(runs)
    if not cells:
        raise SystemExit(f"report: no results under {runs}")
    sel = chosen(cells)
    if measure_speed:
        from . import speed
        todo = [r for (f, b, s), r in sel.items() if s == "random" and f in ("mlp", "lstm") and "speed" not in r]
        for i, r in enumerate(todo, 1):
            log(f"[{i}/{len(todo)}] measuring speed of {os.path.basename(r['dir'])}", file=sys.stderr)
            r["speed"] = speed.measure(r["dir"])
    figdir = out + "-figures"
    os.makedirs(figdir, exist_ok=True)
    rel = os.path.basename(figdir)
    splits = [s for s in ("random", "flow", "capture") if any(k[2] == s for k in sel)]
    md = ["# Reproducing Dicks & Chavula (2021) on public captures", "",
          f"Generated by `tc-daemon report --runs {runs} --out {out}{'' if measure_speed else ' --no-speed'}` "
          f"from {len(cells)} trained cells.", ""]
    notes = out + "-notes.md"  # hand-written context (ablations, what was not run) kept beside the report
    if os.path.exists(notes):
        with open(notes) as f:
            md += [f.read().rstrip(), ""]
    cpu = next((r["cpu"] for r in cells if r.get("cpu")), "?")
    md += [f"Machine: {cpu}. Accuracy is per packet on the test part of each split; `flow dec.` is the "
           "packet-weighted accuracy when each flow is decided by its first "
           f"{cells[0].get('flow_k', 5)} payload packets, as the daemon does.", ""]
    for s in splits:
        png = f"accuracy-{s}.png"
        plot_accuracy(sel, s, os.path.join(figdir, png))
        md += [f"## Accuracy, {SPLIT_TITLE[s]}", "", f"![accuracy {s}]({rel}/{png})", "",
               "| family | budget | params | lr | epochs | train s | accuracy | macro-F1 | flow dec. | paper |",
               "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for (f, b, sp), r in sorted(sel.items(), key=lambda kv: (kv[0][0], kv[0][1])):
            if sp != s:
                continue
            md.append(f"| {f} | {b:,} | {r['params']:,} | {r['lr']:g} | {r['epochs']} | {r['train_seconds']:.0f} | "
                      f"{r['packet']['accuracy']:.3f} | {r['packet']['macro_f1']:.3f} | "
                      f"{r['flow_decision_packets']['accuracy']:.3f} | {PAPER.get(f, '')} |")
        md.append("")
        best = max((r for (f, b, sp), r in sel.items() if sp == s), key=lambda r: r["packet"]["accuracy"])
        cpng = f"confusion-{s}.png"
        plot_confusion(best, os.path.join(figdir, cpng))
        md += [f"Best on this split: {best['family'].upper()} {best['params']:,} params. Per-class F1: " +
               ", ".join(f"{c} {v:.2f}" for c, v in zip(best["classes"], best["packet"]["f1"])), "",
               f"![confusion {s}]({rel}/{cpng})", ""]
    md += ["## Learning-rate search (random split, validation accuracy)", "",
           "| family | budget | lr | val accuracy | test accuracy |", "|---|---:|---:|---:|---:|"]
    for r in sorted((c for c in cells if c["split"] == "random"), key=lambda c: (c["family"], c["budget"], c["lr"])):
        md.append(f"| {r['family']} | {r['budget']:,} | {r['lr']:g} | {r['val_accuracy']:.3f} | {r['packet']['accuracy']:.3f} |")
    md.append("")
    sp_cells = [r for r in sel.values() if "speed" in r]
    if sp_cells:
        plot_speed_params(sel, os.path.join(figdir, "speed-params.png"))
        md += ["## Speed", "", f"Measured on {sp_cells[0]['speed']['cpu']} by `models/speed.py` (Keras `predict`, "
               "the paper's method, beside the int8 TFLite export through ai-edge-litert with one thread), "
               "in the same run.", "", "![speed against parameters](" + rel + "/speed-params.png)", "",
               "| family | params | Keras pkt/s @1 | TFLite pkt/s @1 | TFLite pkt/s @64 | TFLite pkt/s @1024 | paper (Keras @1) |",
               "|---|---:|---:|---:|---:|---:|---|"]
        for r in sorted(sp_cells, key=lambda r: (r["family"], r["params"])):
            k, t = r["speed"]["keras"], r["speed"]["tflite"]
            md.append(f"| {r['family']} | {r['params']:,} | {k['1']:.1f} | {t['1']:,.0f} | {t.get('64', 0):,.0f} | "
                      f"{t.get('1024', 0):,.0f} | {PAPER_PPS.get(r['family'], '')} |")
        md.append("")
        for fam in ("lstm", "mlp"):
            if plot_twin(sel, fam, os.path.join(figdir, f"twin-{fam}.png")):
                md += [f"![{fam} accuracy and speed]({rel}/twin-{fam}.png)", ""]
        best = [max((r for r in sp_cells if r["family"] == f), key=lambda r: r["packet"]["accuracy"], default=None)
                for f in ("lstm", "mlp")]
        best = [r for r in best if r]
        if best:
            plot_batch(best, os.path.join(figdir, "batch-best.png"), "Packets/s against batch size: the best models")
            md += ["![batch best](" + rel + "/batch-best.png)", ""]
        eq = []
        for target in sorted({r["budget"] for r in sp_cells}):
            pair = [r for r in sp_cells if r["budget"] == target]
            if len(pair) == 2:
                eq = pair
        if eq:
            plot_batch(eq, os.path.join(figdir, "batch-equal.png"),
                       f"Packets/s against batch size: equal-sized models ({eq[0]['budget']:,} parameters)")
            md += ["![batch equal](" + rel + "/batch-equal.png)", ""]
    with open(out + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    slim = [{k: v for k, v in r.items() if k != "dir"} | {"cell": os.path.basename(r["dir"])} for r in cells]
    with open(out + "-results.json", "w") as f:
        json.dump(slim, f, indent=1)
    log(f"wrote {out}.md, {figdir}/ and {out}-results.json", file=sys.stderr)


def main(a):
    if a.cv:
        from . import unseen
        return unseen.build(a.cv, a.out, a.dataset)
    build(a.runs, a.out, measure_speed=not a.no_speed)
