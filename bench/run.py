"""`tc-daemon bench`: models, features, offline and live throughput; a table and a JSON.

    tc-daemon bench                       # everything, writes docs/bench.json
    tc-daemon bench --only models,features --quick

Tests never assert on these numbers; the README and docs/performance.md quote
the JSON with the command that made it.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

from daemon import registry
from daemon.capture.pcapfile import CaptureError, PcapReader
from daemon.features import N_BYTES, payload_bytes
from daemon.packet import decode

from . import DEFAULT_CORPUS, from_checkout, machine
from . import models as bm

KERAS_DIR = from_checkout("models", "shipped", "keras")


def corpus_files(path):
    files = sorted(f for f in glob.glob(os.path.join(path, "*")) if os.path.isfile(f))
    if not files:
        raise SystemExit(f"bench: no captures in {path} (give --corpus)")
    return files


def section_models(quick=False, update_manifest=False):
    rows = []
    for e in registry.load_manifest()["models"]:
        f = bm.tflite_figures(e, batches=(1, 64, 256))
        f["peak_memory_bytes"] = bm.peak_memory(e)
        k = None if quick else bm.keras_batch1(e, KERAS_DIR)
        # the manifest's figures were measured at export: re-measured here, their ratio shows the noise
        vs = {key: f[key] / e[key] for key in ("pps_batch1", "pps_batch64") if e.get(key)}
        if e.get("peak_memory_bytes"):
            vs["peak_memory_bytes"] = f["peak_memory_bytes"] / e["peak_memory_bytes"]
        rows.append(dict(name=e["name"], family=e["family"], params=e["params"], bytes=e["bytes"],
                         keras_pps_batch1=k, tflite_over_keras=(f["pps_batch1"] / k) if k else None,
                         over_manifest=vs, **f))
        print(f"  {e['name']:<20} {f['pps_batch1']:>9.0f} pkt/s @1 {f['pps_batch256']:>9.0f} @256  "
              f"p50 {f['p50_us']:>7.0f} us p99 {f['p99_us']:>7.0f} us  mem {f['peak_memory_bytes'] / 2**20:5.1f} MiB"
              + (f"  Keras @1 {k:5.1f} pkt/s (x{f['pps_batch1'] / k:,.0f})" if k else "")
              + (f"  /manifest @1 x{vs['pps_batch1']:.2f}" if "pps_batch1" in vs else ""), flush=True)
        if update_manifest:  # measured on a quiet machine, these become the manifest's figures
            bm.record(e["name"], f)
    if update_manifest:
        print(f"  wrote these figures into {registry.SHIPPED_DIR}/manifest.json")
    return rows


def _corpus_packets(files, limit=None):
    pkts, offs = [], []
    for path in files:
        try:
            with PcapReader(path) as r:
                for lt, _, frame in r:
                    d = decode(lt, frame)
                    if not isinstance(d, int) and d[9] < d[8]:
                        pkts.append(bytes(frame[:d[8]]))
                        offs.append(d[7])
        except CaptureError:
            continue
        if limit and len(pkts) >= limit:
            break
    return pkts, offs


def section_features(files, quick=False):
    """Capture reading + decoding, then payload_bytes in batches of 256."""
    t = time.perf_counter()
    n_frames = 0
    for path in files:
        try:
            with PcapReader(path) as r:
                for lt, _, frame in r:
                    decode(lt, frame)
                    n_frames += 1
        except CaptureError:
            pass
    read_s = time.perf_counter() - t
    pkts, offs = _corpus_packets(files, 20000 if quick else None)
    out = np.zeros((256, N_BYTES), np.uint8)
    t = time.perf_counter()
    reps = 1 if quick else 3
    for _ in range(reps):
        for s in range(0, len(pkts), 256):
            payload_bytes(pkts[s:s + 256], offs[s:s + 256], out=out)
    feat_s = (time.perf_counter() - t) / reps
    res = dict(frames=n_frames, read_decode_pps=n_frames / read_s, payload_packets=len(pkts),
               features_pps=len(pkts) / feat_s, batch=256)
    print(f"  read+decode {res['read_decode_pps']:,.0f} frames/s over {n_frames} frames; "
          f"features {res['features_pps']:,.0f} packets/s (batch 256)", flush=True)
    return res


def section_offline(files, corpus):
    """`tc-daemon classify` over the corpus (whole process), and ndpiReader over the same files."""
    exe = shutil.which("tc-daemon") or f"{sys.executable} -m daemon.cli"
    res = dict(files=len(files))
    n_frames = sum(1 for p in files for _ in _safe_iter(p))
    res["frames"] = n_frames
    for mode in ("flow", "packet"):
        t = time.perf_counter()
        r = subprocess.run(exe.split() + ["classify", corpus, "--mode", mode, "--output", "summary"],
                           capture_output=True, text=True)
        dt = time.perf_counter() - t
        res[f"classify_{mode}_seconds"] = dt
        res[f"classify_{mode}_pps"] = n_frames / dt
        res[f"classify_{mode}_exit"] = r.returncode
        print(f"  classify --mode {mode}: {n_frames / dt:,.0f} packets/s ({dt:.1f} s, exit {r.returncode})", flush=True)
    nd = shutil.which("ndpiReader")
    if nd:
        # one process per capture (ndpiReader reads one file per run): the wall time includes 407
        # process starts, so its own "Packet Processing Time" is summed too, for the engine alone
        t, proc_ms = time.perf_counter(), 0.0
        for p in files:
            r = subprocess.run([nd, "-i", p], capture_output=True, text=True)
            m = re.search(r"Packet Processing Time:\s+([0-9.]+)\s+msec", r.stdout)
            proc_ms += float(m.group(1)) if m else 0.0
        dt = time.perf_counter() - t
        res["ndpiReader_seconds"] = dt
        res["ndpiReader_pps"] = n_frames / dt
        res["ndpiReader_processing_seconds"] = proc_ms / 1000
        res["ndpiReader_processing_pps"] = n_frames / max(proc_ms / 1000, 1e-3)
        res["ndpiReader_version"] = subprocess.run([nd, "-h"], capture_output=True, text=True).stdout.split("\n")[0]
        res["classify_flow_over_ndpiReader"] = res["classify_flow_pps"] / res["ndpiReader_pps"]
        print(f"  ndpiReader: {n_frames / dt:,.0f} packets/s ({dt:.1f} s, one process per capture); its own "
              f"processing time {proc_ms / 1000:.2f} s = {res['ndpiReader_processing_pps']:,.0f} packets/s",
              flush=True)
    return res


def _safe_iter(path):
    try:
        with PcapReader(path) as r:
            yield from r
    except CaptureError:
        return


def default_lstm():
    """The LSTM `run` would choose under the default memory budget if LSTMs were all it had."""
    from daemon.config import Config
    lstms = [e for e in registry.load_manifest()["models"] if e["family"] == "lstm"]
    try:
        return registry.choose(lstms, Config().model.memory_budget)["name"] if lstms else None
    except registry.ModelError:
        return None


def main(a):
    # SIGTERM (timeout, kill) unwinds like Ctrl-C, so the live section's finally removes its
    # namespace, veth pair and daemon instead of leaving them behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sections = set((a.only or "models,features,offline,live").split(","))
    corpus = a.corpus or DEFAULT_CORPUS
    out = dict(machine=machine.describe(), command="tc-daemon bench " + " ".join(sys.argv[2:]),
               date=time.strftime("%Y-%m-%d"))
    print(f"machine: {out['machine']['cpu']}, {out['machine']['cores']} cores, python {out['machine']['python']}")
    if "models" in sections:
        print("models (TFLite via ai-edge-litert, 1 thread):")
        out["models"] = section_models(a.quick, a.update_manifest)
    if "features" in sections or "offline" in sections:
        files = corpus_files(corpus)
    if "features" in sections:
        print("features:")
        out["features"] = section_features(files, a.quick)
    if "offline" in sections:
        print("offline:")
        out["offline"] = section_offline(files, corpus)
    if "live" in sections:
        from . import live
        print("live (tcpreplay onto a veth pair):")
        out["live"] = {mode: live.ladder(mode=mode, corpus=corpus, quick=a.quick) for mode in ("flow", "packet")}
        lstm = default_lstm()
        if lstm:
            # issue 7's packet-mode target is set for the LSTM: the most accurate one the default budget admits
            print(f"live, packet mode with {lstm}:")
            out["live"]["packet_lstm"] = dict(live.ladder(rates=live.LADDER[:5], mode="packet", corpus=corpus,
                                                          quick=a.quick, config_extra=f"model:\n  name: {lstm}\n"),
                                              model=lstm)
    os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
    with open(a.output, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {a.output}")
    from . import plot
    for png in plot.draw(a.output):
        print(f"wrote {png}")
