"""The paper's grid: families x parameter budgets x learning rates x splits. Resumable.

    tc-daemon sweep --dataset ds.npz --out runs/default

The learning rate is searched on the random split (the paper's protocol) by
validation accuracy, then reused for the flow and capture splits, which
keeps the grid affordable on two cores. A cell whose results.json exists is
skipped, so an interrupted sweep picks up where it stopped.
"""
from __future__ import annotations

import json
import os
import sys
import time

from daemon.errors import CliError

from . import dataset, zoo
from .train import LR_GRID, cell_name, train_cell


def _done(out, name):
    path = os.path.join(out, name, "results.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return None


def plan(families, budgets, splits):
    """Cells in run order: the LR search on `random` first, then the other splits."""
    cells = []
    for fam in families:
        for b in (budgets if fam != "svm" else [0]):
            for lr in LR_GRID[fam]:
                cells.append((fam, b, lr, "random"))
            for sp in splits:
                if sp != "random":
                    cells.append((fam, b, None, sp))  # lr resolved once the search is done
    return cells


def best_lr(out, fam, b, seed):
    cands = [r for lr in LR_GRID[fam] if (r := _done(out, cell_name(fam, b, lr, "random", seed)))]
    return max(cands, key=lambda r: r["val_accuracy"])["lr"] if cands else LR_GRID[fam][0]


def main(a):
    ds = dataset.load(a.dataset)
    families = [f.strip() for f in a.families.split(",") if f.strip()]
    budgets = [int(float(b)) for b in a.budgets.split(",")] if a.budgets else zoo.BUDGETS
    splits = [s.strip() for s in a.splits.split(",")]
    cells = plan(families, budgets, splits)
    t_start = time.time()
    for i, (fam, b, lr, sp) in enumerate(cells, 1):
        if lr is None:
            lr = best_lr(a.out, fam, b, a.seed)
        name = cell_name(fam, b, lr, sp, a.seed)
        prefix = f"[{i}/{len(cells)} {time.time() - t_start:6.0f}s]"
        if _done(a.out, name):
            print(f"{prefix} {name}: done, skipped", file=sys.stderr)
            continue
        print(f"{prefix} {name}: training ...", file=sys.stderr, flush=True)
        try:
            r = train_cell(ds, fam, b, lr, sp, os.path.join(a.out, name), epochs=a.epochs, patience=a.patience,
                           batch_size=a.batch_size, seed=a.seed, include_other=a.include_other,
                           balance_to=a.balance, verbose=0 if a.quiet else 2)
        except CliError as e:  # e.g. a split with an empty part on a small dataset: say so, go on
            print(f"{prefix} {name}: skipped: {e}", file=sys.stderr, flush=True)
            continue
        p = r["packet"]
        print(f"{prefix} {name}: params={r['params']} acc={p['accuracy']:.3f} macro-F1={p['macro_f1']:.3f} "
              f"flow-decisions={r['flow_decision_packets']['accuracy']:.3f} ({r['epochs']} ep, "
              f"{r['train_seconds']:.0f}s)", file=sys.stderr, flush=True)
    if a.report:
        from . import report
        report.build(a.out, a.report)
