"""Captures -> flows -> nDPI labels -> a per-packet dataset, with its splits.

As in the paper (pkt2flow + nDPI), every packet takes its flow's label; but
the flow table is daemon/flows.py and the bytes come from
daemon/features.payload_bytes, the same code the gateway runs.

    tc-daemon dataset build ../shared/data/ndpi-pcaps/pcap -o ds.npz
"""
from __future__ import annotations

import glob
import zlib
import os
import sys
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List, Optional, Sequence

import numpy as np

from daemon.capture.pcapfile import CaptureError, PcapReader
from daemon.features import N_BYTES, payload_bytes
from daemon.flows import FlowTable, flow_key, key_fields
from daemon.packet import SKIP_REASONS, decode

from . import labels as L

SPLIT_NAMES = ("train", "val", "test")
SPLIT_FRACTIONS = (0.64, 0.16, 0.20)
CONF_NAMES = list(dict.fromkeys(L.CONFIDENCE.values()))


def expand(paths: Sequence[str]) -> List[str]:
    """Files and folders -> capture files (by content, not extension, later)."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            out += sorted(f for f in glob.glob(os.path.join(p, "*")) if os.path.isfile(f))
        else:
            out.append(p)
    return out


def _out_file(capture: str) -> Optional[str]:
    """nDPI's expected results beside a corpus capture (../result/<name>.out), if any."""
    d, name = os.path.split(os.path.abspath(capture))
    for cand in (os.path.join(os.path.dirname(d), "result", name + ".out"), capture + ".out"):
        if os.path.exists(cand):
            return cand
    return None


def read_capture(job):
    """Worker: one capture -> per-packet arrays (payload rows only unless keep_empty)."""
    path, source, keep_empty = job
    res = {"path": path, "skipped": Counter(), "errors": Counter(), "error": None, "agree": None}
    try:
        reader = PcapReader(path)
    except CaptureError as e:
        res["error"] = str(e)
        return res
    out_labels = None
    out_path = _out_file(path)
    if out_path:
        out_labels = L.from_out_file(out_path)
    if source == "nfstream":
        try:
            labels = L.from_nfstream(path)
        except Exception as e:  # nfstream refuses some link types: fall back, say so
            res["errors"]["nfstream_failed"] += 1
            res["nfstream_error"] = str(e).splitlines()[0] if str(e) else type(e).__name__
            labels = out_labels or {}
    else:
        labels = out_labels or {}

    table = FlowTable(max_flows=1 << 30)
    nth: Dict[bytes, int] = defaultdict(int)    # how many flows we opened per key
    flow_label: Dict[int, L.FlowLabel] = {}
    flow_key_of: Dict[int, bytes] = {}
    pkts, l4offs, meta = [], [], []
    n_total = 0
    for lt, ts, frame in reader:
        n_total += 1
        d = decode(lt, frame)
        if isinstance(d, int):
            res["skipped"][SKIP_REASONS[-d - 1]] += 1
            continue
        _v, proto, src, dst, sport, dport, ip_off, l4_off, l4_end, data_off = d
        key, rev = flow_key(proto, src, sport, dst, dport)
        flow, c2s = table.get(key, rev, ts)
        if flow.packets == 0:
            ks = nth[key]
            nth[key] += 1
            cand = labels.get(key)
            flow_label[flow.id] = L.pick(cand, ks) if cand else L.FlowLabel("Unknown", "unknown")
            flow_key_of[flow.id] = key
        flow.packets += 1
        has_payload = data_off < l4_end
        if not has_payload and not keep_empty:
            continue
        pkts.append(frame[:l4_end])  # payload_bytes copies l4_off..end of this view
        l4offs.append(l4_off)
        meta.append((flow.id, 0 if c2s else 1, l4_end - ip_off, ts, l4_end - data_off, n_total - 1))
    res["errors"].update(reader.errors)
    n = len(pkts)
    res["X"] = payload_bytes(pkts, l4offs) if n else np.zeros((0, N_BYTES), np.uint8)
    del pkts
    reader.close()
    m = np.array(meta, dtype=[("flow", "i4"), ("dir", "i1"), ("length", "i4"), ("ts", "f8"),
                              ("payload_len", "i4"), ("index", "i4")]) if n else None
    res["n_frames"] = n_total
    res["flow"] = m["flow"] if n else np.zeros(0, np.int32)
    res["direction"] = m["dir"] if n else np.zeros(0, np.int8)
    res["length"] = m["length"] if n else np.zeros(0, np.int32)
    res["ts"] = m["ts"] if n else np.zeros(0)
    res["payload_len"] = m["payload_len"] if n else np.zeros(0, np.int32)
    res["index"] = m["index"] if n else np.zeros(0, np.int32)  # frame position in its capture
    res["flow_names"] = {fid: (lab.name, lab.confidence) for fid, lab in flow_label.items()}
    res["keys"] = {flow_key_of[fid] for fid in flow_label}
    if out_labels is not None and source == "nfstream" and labels is not out_labels:
        # agreement, per flow that both nDPI runs saw
        agree = []
        for fid, key in flow_key_of.items():
            o = out_labels.get(key)
            if o:
                agree.append((o[0].name, flow_label[fid].name))
        res["agree"] = agree
    return res


def _capture_groups(results, lmap: L.LabelMap) -> List[int]:
    """Group near-copy captures: the YAML's groups, plus any two that share a flow key."""
    names = [os.path.basename(r["path"]) for r in results]
    parent = list(range(len(results)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i, j):
        parent[find(i)] = find(j)

    by_name = {n: i for i, n in enumerate(names)}
    for members in lmap.capture_groups.values():
        idx = [by_name[m] for m in members if m in by_name]
        for j in idx[1:]:
            union(idx[0], j)
    seen: Dict[bytes, int] = {}
    for i, r in enumerate(results):
        for k in r.get("keys", ()):
            _, _, sport, _, dport = key_fields(k)
            if sport == 0 and dport == 0:
                continue  # portless (ICMP, multicast chatter) keys recur by chance
            if k in seen:
                union(seen[k], i)
            else:
                seen[k] = i
    roots = {}
    return [roots.setdefault(find(i), len(roots)) for i in range(len(results))]


def choose_classes(app: np.ndarray, apps: List[str], flow: np.ndarray, group: np.ndarray,
                   rule: dict) -> List[str]:
    """The classes that pass the rule (enough flows, groups and packets), largest first."""
    stats = []
    for i, a in enumerate(apps):
        if a == L.OTHER:
            continue
        sel = app == i
        n_pk = int(sel.sum())
        n_fl = len(np.unique(flow[sel]))
        n_gr = len(np.unique(group[sel]))
        if n_fl >= rule.get("min_flows", 20) and n_gr >= rule.get("min_groups", 3) \
                and n_pk >= rule.get("min_packets", 300):
            stats.append((n_pk, a))
    return [a for _, a in sorted(stats, reverse=True)]


def group_split(groups: np.ndarray, y: np.ndarray, seed: int, fractions=SPLIT_FRACTIONS) -> np.ndarray:
    """Assign whole groups to train/val/test, aiming at 64/16/20 of every class's packets
    (or to len(fractions) parts of those sizes: cross-validation folds).

    Each group weighs, per class, its share of that class's packets, so a
    capture holding most of a rare class counts as much as a big one of
    `other`. Groups go, weightiest first, to the part whose per-class
    shortfall they fill best (a stratified group split): without the
    weighting, large `other`-dominated captures decided alone and a class's
    packets could land 20/50/30 instead of 64/16/20.
    """
    rng = np.random.default_rng(seed)
    ug, inv = np.unique(groups, return_inverse=True)
    n_cls = int(y.max()) + 1 if len(y) else 1
    counts = np.zeros((len(ug), n_cls), np.int64)
    np.add.at(counts, (inv, y), 1)
    share = counts / np.maximum(counts.sum(0), 1)[None, :]  # group's share of each class
    order = rng.permutation(len(ug))
    order = order[np.argsort(-share[order].max(1), kind="stable")]
    frac = np.array(fractions)[:, None]
    have = np.zeros((len(fractions), n_cls))  # share of each class already in each part
    part_of = np.zeros(len(ug), np.int8)
    for g in order:
        shortfall = np.clip(frac - have, 0, None) - np.clip(have + share[g][None, :] - frac, 0, None)
        score = (shortfall * share[g][None, :]).sum(1) / max(share[g].sum(), 1e-12)
        p = int(np.argmax(score + rng.uniform(0, 1e-9, len(fractions))))
        part_of[g] = p
        have[p] += share[g]
    return part_of[inv]


def _uniform(capture_names, capture, item, seed) -> np.ndarray:
    """A uniform [0,1) draw per (capture file, item, seed), independent of the rest of the corpus,
    so that adding or removing captures never reshuffles the others' assignment."""
    name_h = np.array([zlib.crc32(n.encode()) for n in capture_names], np.uint64)
    h = name_h[capture] * np.uint64(0x9E3779B97F4A7C15) ^ (item.astype(np.uint64) + np.uint64(seed) * np.uint64(0xBF58476D1CE4E5B9))
    h ^= h >> np.uint64(31)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(29)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def hashed_split(u: np.ndarray) -> np.ndarray:
    """64/16/20 by a uniform draw per packet (random split) or per flow (flow split)."""
    return np.where(u < 0.64, 0, np.where(u < 0.80, 1, 2)).astype(np.int8)


def balance(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices keeping at most `per_class` packets of each class (all of a smaller one)."""
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        keep.append(rng.choice(idx, min(per_class, len(idx)), replace=False) if len(idx) > per_class else idx)
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)


def build(paths: Sequence[str], out: str, source: str = "nfstream", classes: Optional[List[str]] = None,
          class_set: str = "rule", labels_map: str = L.DEFAULT_MAP, balance_to: Optional[str] = None,
          keep_empty: bool = False, drop_guessed: bool = False, include_other: bool = True,
          seed: int = 0, jobs: int = 0, progress: bool = True, log=print) -> dict:
    """Build the dataset file and return its summary (also printed through `log`)."""
    lmap = L.LabelMap.load(labels_map)
    files = expand(paths)
    if not files:
        raise SystemExit("dataset build: no capture files found in " + " ".join(paths))
    jobs = jobs or os.cpu_count() or 1
    work = [(f, source, keep_empty) for f in files]
    results = []
    bar = _progress(len(work), "captures", progress)
    # ProcessPoolExecutor, not multiprocessing.Pool: nfstream starts processes
    # of its own, which Pool's daemonic workers may not.
    with ProcessPoolExecutor(jobs) as pool:
        for r in pool.map(read_capture, work, chunksize=4):
            results.append(r)
            bar.update(1)
    bar.close()
    results.sort(key=lambda r: r["path"])
    failed = [r for r in results if r["error"]]
    nf_errors = Counter(r["nfstream_error"] for r in results if r.get("nfstream_error"))
    for msg, n in nf_errors.most_common():
        log(f"warning: nfstream could not read {n} capture(s) ({msg}); their labels come from the .out files")
    for r in failed:
        log(f"error: {r['error']}", file=sys.stderr)
    results = [r for r in results if not r["error"]]
    groups = _capture_groups(results, lmap)

    # global tables of names
    ndpi_names: Dict[str, int] = {}
    apps: Dict[str, int] = {L.OTHER: 0}
    cols = defaultdict(list)
    skipped, errors, agree = Counter(), Counter(), []
    flow_base = 0
    n_frames = 0
    for ci, r in enumerate(results):
        skipped.update(r["skipped"])
        errors.update(r["errors"])
        n_frames += r["n_frames"]
        if r.get("agree"):
            agree += r["agree"]
        n = len(r["flow"])
        if not n:
            continue
        names = r["flow_names"]
        fl = r["flow"]
        uf = np.unique(fl)
        nd = {f: ndpi_names.setdefault(names[f][0], len(ndpi_names)) for f in uf}
        ap = {f: apps.setdefault(lmap.application(names[f][0]), len(apps)) for f in uf}
        cf = {f: CONF_NAMES.index(names[f][1]) for f in uf}
        cols["X"].append(r["X"])
        cols["ndpi"].append(np.array([nd[f] for f in fl], np.int16))
        cols["app"].append(np.array([ap[f] for f in fl], np.int16))
        cols["confidence"].append(np.array([cf[f] for f in fl], np.int8))
        cols["flow"].append(fl.astype(np.int64) + flow_base)
        cols["capture"].append(np.full(n, ci, np.int16))
        cols["group"].append(np.full(n, groups[ci], np.int16))
        cols["flow_local"].append(fl.astype(np.int32))
        for k in ("direction", "length", "ts", "payload_len", "index"):
            cols[k].append(r[k])
        flow_base += int(fl.max()) + 1
    if not cols:
        raise SystemExit("dataset build: no packets with payload in the given captures")
    data = {k: np.concatenate(v) for k, v in cols.items()}
    app_names = list(apps)
    conf_guessed = np.isin(data["confidence"], [CONF_NAMES.index(c) for c in L.GUESSED])
    if drop_guessed:
        keep = ~conf_guessed | (data["app"] == 0)
        data = {k: v[keep] for k, v in data.items()}

    # the class set
    if classes:
        chosen = list(classes)
        rule_text = "explicit list"
    elif class_set == "paper":
        chosen = list(lmap.paper_classes)
        rule_text = "the paper's ten classes"
    else:
        rule = lmap.class_rule
        chosen = choose_classes(data["app"], app_names, data["flow"], data["group"], rule)
        rule_text = (f">= {rule.get('min_flows')} flows with payload, in >= {rule.get('min_groups')} "
                     f"capture groups, >= {rule.get('min_packets')} payload packets")
    class_names = chosen + [L.OTHER]
    app_to_class = np.array([chosen.index(a) if a in chosen else len(chosen) for a in app_names], np.int16)
    data["label"] = app_to_class[data["app"]]
    if not include_other:
        keep = data["label"] < len(chosen)
        data = {k: v[keep] for k, v in data.items()}
    if balance_to:
        counts = np.bincount(data["label"], minlength=len(class_names))
        per = int(counts[counts > 0].min()) if balance_to == "min" else int(balance_to)
        keep = balance(data["label"], per, seed)
        data = {k: v[keep] for k, v in data.items()}

    n = len(data["label"])
    cap_names = [os.path.basename(r["path"]) for r in results]
    # the paper's split: packets at random; then whole flows; then whole capture groups
    with np.errstate(over="ignore"):
        data["split_random"] = hashed_split(_uniform(cap_names, data["capture"], data["index"], seed))
        data["split_flow"] = hashed_split(_uniform(cap_names, data["capture"], data["flow_local"], seed + 1))
    data["split_capture"] = group_split(data["group"], data["label"], seed)
    meta = dict(classes=np.array(class_names), apps=np.array(app_names), ndpi_names=np.array(list(ndpi_names)),
                captures=np.array([os.path.basename(r["path"]) for r in results]),
                confidence_names=np.array(CONF_NAMES), label_source=np.array(source),
                class_rule=np.array(rule_text), seed=np.array(seed))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    np.savez_compressed(out, **data, **meta)

    summary = summarize(data, class_names, n_frames, skipped, errors, agree, lmap, len(results), failed)
    summary["class_rule"] = rule_text
    print_summary(summary, log)
    return summary


def summarize(data, class_names, n_frames, skipped, errors, agree, lmap, n_captures, failed):
    rows = []
    for i, c in enumerate(class_names):
        sel = data["label"] == i
        rows.append(dict(cls=c, packets=int(sel.sum()), flows=int(len(np.unique(data["flow"][sel]))),
                         captures=int(len(np.unique(data["capture"][sel]))),
                         groups=int(len(np.unique(data["group"][sel])))))
    s = dict(classes=rows, frames=n_frames, packets=int(len(data["label"])), captures=n_captures,
             failed=[r["error"] for r in failed], skipped=dict(skipped), reader_errors=dict(errors))
    if agree:
        full = sum(a == b for a, b in agree)
        app = sum(lmap.application(a) == lmap.application(b) for a, b in agree)
        diff = Counter((a, b) for a, b in agree if lmap.application(a) != lmap.application(b))
        s["agreement"] = dict(flows=len(agree), same_name=full / len(agree), same_application=app / len(agree),
                              top_differences=[(a, b, n) for (a, b), n in diff.most_common(15)])
    return s


def print_summary(s, log=print):
    log(f"{s['captures']} captures, {s['frames']} frames, {s['packets']} packets in the dataset")
    log(f"{'class':<18}{'packets':>9}{'flows':>8}{'captures':>10}{'groups':>8}")
    for r in s["classes"]:
        log(f"{r['cls']:<18}{r['packets']:>9}{r['flows']:>8}{r['captures']:>10}{r['groups']:>8}")
    log("skipped frames by reason: " + (", ".join(f"{k}={v}" for k, v in sorted(s["skipped"].items())) or "none"))
    if s["reader_errors"]:
        log("capture reading problems: " + ", ".join(f"{k}={v}" for k, v in sorted(s["reader_errors"].items())))
    a = s.get("agreement")
    if a:
        log(f"nfstream vs nDPI .out files over {a['flows']} flows: same nDPI name {a['same_name']:.1%}, "
            f"same application {a['same_application']:.1%}")
        for x, y, n in a["top_differences"]:
            log(f"  {n:>4}  .out {x:<28} nfstream {y}")


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(total, unit, enabled):
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
        return tqdm(total=total, unit=unit, file=sys.stderr, dynamic_ncols=True)
    except ImportError:
        return _NoBar()


def load(path: str) -> dict:
    """The dataset file as a dict of arrays (names decoded to lists)."""
    with np.load(path, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    for k in ("classes", "apps", "ndpi_names", "captures", "confidence_names"):
        d[k] = [str(x) for x in d[k]]
    return d
