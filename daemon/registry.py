"""The shipped models' manifest, and choosing one by memory budget.

models/shipped/manifest.json lists every model with its measured figures.
The daemon picks the most accurate model whose run-time memory fits the
operator's budget (and, optionally, that reaches a packets/s floor).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys

from .classifier import Classifier, ModelError

# models/ is installed beside daemon/; TC_DAEMON_MODELS_DIR points elsewhere (tests, custom zoos)
SHIPPED_DIR = os.environ.get("TC_DAEMON_MODELS_DIR") or os.path.normpath(
    os.path.join(os.path.dirname(__file__), "..", "models", "shipped"))
MANIFEST = "manifest.json"
RANK_SPLITS = ("capture", "flow", "random")  # the most honest figure available ranks a model

_SIZE = re.compile(r"^\s*([0-9.]+)\s*([kmg]?)(i?)(b?)\s*$", re.I)


def parse_size(s) -> int:
    """'2MiB' -> 2097152, '500k' -> 500000, '1.5MB' -> 1500000, 1048576 -> 1048576."""
    if isinstance(s, (int, float)):
        return int(s)
    m = _SIZE.match(str(s))
    if not m:
        raise ValueError(f"not a size: {s!r} (use e.g. 2MiB, 500k, 1048576)")
    num, unit, binary = float(m.group(1)), m.group(2).lower(), m.group(3)
    base = 1024 if binary else 1000
    return int(num * base ** {"": 0, "k": 1, "m": 2, "g": 3}[unit])


def fmt_size(n: int) -> str:
    for unit, div in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n}B"


def load_manifest(directory: str = SHIPPED_DIR) -> dict:
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path) as f:
            m = json.load(f)
    except FileNotFoundError:
        raise ModelError(f"{path}: no model manifest (reinstall tc-daemon, or train and export models)") from None
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: unreadable manifest ({e})") from None
    m.setdefault("models", [])
    return m


def rank_accuracy(entry: dict) -> float:
    acc = entry.get("accuracy", {})
    for split in RANK_SPLITS:
        if split in acc:
            return acc[split]["accuracy"]
    return 0.0


def memory_of(entry: dict) -> int:
    """What the model costs at run time: measured peak if known, else the file size."""
    return int(entry.get("peak_memory_bytes") or entry["bytes"])


def choose(models, memory_budget=None, min_pps=None) -> dict:
    """The most accurate model that fits; a budget nothing fits is a ModelError naming the smallest."""
    return candidates(models, memory_budget, min_pps)[0]


def candidates(models, memory_budget=None, min_pps=None) -> list:
    """Every model that fits, best first (the first is `choose`'s answer)."""
    if not models:
        raise ModelError("the manifest lists no models")
    fits = [m for m in models if memory_budget is None or memory_of(m) <= memory_budget]
    if not fits:
        small = min(models, key=memory_of)
        raise ModelError(f"no model fits a memory budget of {fmt_size(memory_budget)}: the smallest is "
                         f"{small['name']} ({fmt_size(memory_of(small))})")
    if min_pps:
        fast = [m for m in fits if m.get("pps_batch1", 0) >= min_pps]
        if not fast:
            best = max(fits, key=lambda m: m.get("pps_batch1", 0))
            raise ModelError(f"no model within the budget reaches {min_pps:g} packets/s: the fastest is "
                             f"{best['name']} ({best.get('pps_batch1', 0):.0f} packets/s)")
        fits = fast
    # most accurate; ties go to the smaller model
    return sorted(fits, key=lambda m: (-round(rank_accuracy(m), 4), memory_of(m)))


def find(name_or_path: str, directory: str = SHIPPED_DIR) -> dict:
    m = load_manifest(directory)
    for e in m["models"]:
        if e["name"] == name_or_path or e["file"] == name_or_path:
            return dict(e, path=os.path.join(directory, e["file"]))
    raise ModelError(f"no model named {name_or_path!r} in {os.path.join(directory, MANIFEST)} "
                     f"(have: {', '.join(e['name'] for e in m['models']) or 'none'})")


def open_model(entry: dict, directory: str = SHIPPED_DIR, num_threads: int = 1, max_batch: int = 256):
    """Load a manifest entry, verifying its sha256 first. Raises ModelError with one line."""
    path = entry.get("path") or os.path.join(directory, entry["file"])
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise ModelError(f"{path}: {e.strerror or e}") from None
    want = entry.get("sha256")
    if want and hashlib.sha256(blob).hexdigest() != want:
        raise ModelError(f"{path}: sha256 does not match the manifest (corrupt or replaced file)")
    clf = Classifier(path, view=entry.get("view", "flat"), num_threads=num_threads, max_batch=max_batch,
                     content=blob)
    if clf.n_classes != len(entry["classes"]):
        raise ModelError(f"{path}: model has {clf.n_classes} outputs, manifest lists {len(entry['classes'])} classes")
    return clf


def load_path(path: str, classes=None, view=None, num_threads: int = 1, max_batch: int = 256):
    """A .tflite outside the manifest: a sidecar <file>.json gives its classes and view."""
    side = os.path.splitext(path)[0] + ".json"
    meta = {}
    if os.path.exists(side):
        with open(side) as f:
            meta = json.load(f)
    classes = classes or meta.get("classes")
    if not classes:
        raise ModelError(f"{path}: not in the manifest and no {side} naming its classes")
    entry = dict(name=os.path.basename(path), file=os.path.basename(path), path=path, classes=classes,
                 view=view or meta.get("view", "flat"), family=meta.get("family", "?"),
                 params=meta.get("params", 0), bytes=os.path.getsize(path),
                 reject_threshold=meta.get("reject_threshold", 0.0), quantization=meta.get("quantization", "?"))
    return entry, open_model(entry, num_threads=num_threads, max_batch=max_batch)


def _read(directory: str) -> dict:
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        return {"models": []}
    with open(path) as f:
        return json.load(f)


def _write(m: dict, directory: str):
    """Atomically: a reader (the daemon on SIGHUP) never sees half a manifest."""
    path = os.path.join(directory, MANIFEST)
    with open(path + ".tmp", "w") as f:
        json.dump(m, f, indent=1)
    os.replace(path + ".tmp", path)


def ship(tflite_path: str, entry: dict, directory: str = SHIPPED_DIR):
    """Copy a model into the shipped folder and record it in the manifest (replacing same name)."""
    os.makedirs(directory, exist_ok=True)
    shutil.copyfile(tflite_path, os.path.join(directory, entry["file"]))
    m = _read(directory)
    m["models"] = [e for e in m["models"] if e["name"] != entry["name"]] + [entry]
    m["models"].sort(key=lambda e: (e["family"], e["params"], e["quantization"]))
    _write(m, directory)


def unship(name: str, directory: str = SHIPPED_DIR):
    """Take a model's file and manifest entry out; returns the entry, or None if it was not there."""
    m = _read(directory)
    gone = next((e for e in m["models"] if e["name"] == name), None)
    if gone is not None:
        m["models"] = [e for e in m["models"] if e is not gone]
        _write(m, directory)
        path = os.path.join(directory, gone["file"])
        if os.path.exists(path):
            os.remove(path)
    return gone


def set_meta(directory: str = SHIPPED_DIR, **fields):
    """Manifest-wide facts (the CPU the speeds were measured on)."""
    m = _read(directory)
    m.update(fields)
    _write(m, directory)


def update_entry(name: str, fields: dict, directory: str = SHIPPED_DIR):
    m = _read(directory)
    for e in m["models"]:
        if e["name"] == name:
            e.update(fields)
    _write(m, directory)


def cli_list(a):
    """`tc-daemon models list [--format table|json] [--memory-budget B] [--min-pps N]`."""
    from .errors import CliError
    budget = a.memory_budget
    if budget is None:  # the config's budget, or the default config's: what `run` would choose
        from . import config as cfgmod
        budget = cfgmod.load(getattr(a, "config", None)).model.memory_budget
    try:
        m = load_manifest()
        budget_b = parse_size(budget) if budget is not None else None
        chosen = None
        err = None
        try:
            chosen = choose(m["models"], budget_b, a.min_pps)
        except ModelError as e:
            err = str(e)
    except (ModelError, ValueError) as e:
        raise CliError(str(e))
    rows = []
    for e in m["models"]:
        rows.append(dict(name=e["name"], family=e["family"], quantization=e.get("quantization"),
                         classes=e["classes"], params=e["params"], bytes=e["bytes"],
                         peak_memory_bytes=e.get("peak_memory_bytes"),
                         accuracy=e.get("accuracy", {}), pps_batch1=e.get("pps_batch1"),
                         pps_batch64=e.get("pps_batch64"), reject_threshold=e.get("reject_threshold"),
                         default=chosen is not None and e["name"] == chosen["name"]))
    if a.format == "json":
        json.dump(rows, sys.stdout, indent=1)
        print()
    else:
        print(f"  {'name':<22}{'family':<7}{'params':>9}{'bytes':>10}{'memory':>10}{'acc(capture)':>14}"
              f"{'acc(random)':>13}{'pkt/s@1':>10}{'pkt/s@64':>10}")
        for r in rows:
            acc = r["accuracy"]
            ac = f"{acc['capture']['accuracy']:.3f}" if "capture" in acc else "-"
            ar = f"{acc['random']['accuracy']:.3f}" if "random" in acc else "-"
            mem = fmt_size(r["peak_memory_bytes"]) if r["peak_memory_bytes"] else "-"
            p1 = f"{r['pps_batch1']:.0f}" if r["pps_batch1"] else "-"
            p64 = f"{r['pps_batch64']:.0f}" if r["pps_batch64"] else "-"
            print(f"{'*' if r['default'] else ' '} {r['name']:<22}{r['family']:<7}{r['params']:>9}{r['bytes']:>10}"
                  f"{mem:>10}{ac:>14}{ar:>13}{p1:>10}{p64:>10}")
        if m.get("cpu"):
            print(f"speeds measured on {m['cpu']}")
        print("* = chosen for " + (f"memory budget {fmt_size(budget_b)}" if budget_b else "no memory budget"))
    if err:
        raise CliError(err)
