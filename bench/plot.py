"""Draw a bench JSON: the live ladders and the models' speed, as PNGs beside it.

    python -m bench.plot docs/bench.json       # -> docs/bench-live.png, docs/bench-models.png

`tc-daemon bench` calls this after writing its JSON when matplotlib is there
(the [train] extra); a gateway without it gets the table and the JSON only.
"""
from __future__ import annotations

import json
import os
import sys

LADDERS = (("flow", "flow mode, default model"), ("packet", "packet mode, default model"),
           ("packet_lstm", "packet mode, 15k LSTM"))


def live(data: dict, path: str, plt):
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    for key, label in LADDERS:
        steps = (data.get(key) or {}).get("steps") or []
        if not steps:
            continue
        rate = [s["rate"] for s in steps]
        lost = [100 * (sum(s["dropped"].values()) + s["kernel_drops"]) / max(1, s["sent"] or 1) for s in steps]
        axes[0].plot(rate, lost, "o-", label=label)
        axes[1].plot(rate, [1000 * s["latency_p99_s"] for s in steps], "o-", label=label)
        axes[2].plot(rate, [s["cpu_percent"] for s in steps], "o-", label=label)
        axes[3].plot(rate, [s["rss_bytes"] / 2 ** 20 for s in steps], "o-", label=label)
    titles = ("frames that skipped the model or were lost (% of sent)", "p99 capture-to-decision (ms)",
              "CPU (% of one core)", "RSS (MiB)")
    for ax, title in zip(axes, titles):
        ax.set_xscale("log")
        ax.set_xlabel("offered packets/s (tcpreplay)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[1].set_yscale("log")
    axes[1].axhline(20, color="grey", ls="--", lw=1)  # issue 7's target
    axes[3].axhline(100e6 / 2 ** 20, color="grey", ls="--", lw=1)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def models(rows: list, path: str, plt):
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for fam, marker in (("mlp", "o"), ("lstm", "s")):
        sel = sorted((r for r in rows if r["family"] == fam), key=lambda r: r["params"])
        if not sel:
            continue
        p = [r["params"] for r in sel]
        ax.plot(p, [r["pps_batch1"] for r in sel], marker + "-", label=f"{fam.upper()} TFLite int8, batch 1")
        ax.plot(p, [r["pps_batch256"] for r in sel], marker + "--", label=f"{fam.upper()} TFLite int8, batch 256")
        if any(r.get("keras_pps_batch1") for r in sel):
            ax.plot(p, [r.get("keras_pps_batch1") for r in sel], marker + ":", label=f"{fam.upper()} Keras predict, batch 1")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("packets/s (one thread)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw(json_path: str) -> list:
    """The PNGs written beside json_path (none without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    with open(json_path) as f:
        d = json.load(f)
    stem = os.path.splitext(json_path)[0]
    out = []
    if isinstance(d.get("live"), dict) and any(isinstance(v, dict) and v.get("steps") for v in d["live"].values()):
        live(d["live"], stem + "-live.png", plt)
        out.append(stem + "-live.png")
    if isinstance(d.get("models"), list) and d["models"]:
        models(d["models"], stem + "-models.png", plt)
        out.append(stem + "-models.png")
    return out


if __name__ == "__main__":
    for p in draw(sys.argv[1] if len(sys.argv) > 1 else "docs/bench.json"):
        print("wrote", p)
