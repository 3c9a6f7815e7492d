"""The pipeline on real captures with a real TFLite model: classify's outputs, decisions, live == offline."""
import copy
import json
import os
import threading
import time
from collections import Counter, defaultdict

import pytest

from daemon import config as C
from daemon import model as modelmod
from daemon.capture.pcapfile import PcapReader
from daemon.capture.replay import ReplaySource
from daemon.features import payload_bytes
from daemon.flows import flow_key
from daemon.packet import decode
from daemon.pipeline import Pipeline
from tests.daemon_proc import ROOT, SAMPLES, error_lines, models_dir, run_cli

SAMPLE_FILES = sorted(os.path.join(SAMPLES, f) for f in os.listdir(SAMPLES) if f.endswith(".pcap"))
DNS = os.path.join(SAMPLES, "googledns_android10.pcap")  # TCP, UDP and ICMP
TEST_DATA = os.path.join(ROOT, "tests", "data")


@pytest.fixture(scope="module")
def model():
    return modelmod.load(directory=models_dir())


def jsonl(*args):
    r = run_cli("classify", *args, "--format", "jsonl")
    assert r.returncode == 0 and not error_lines(r.stderr), r.stderr
    return [json.loads(l) for l in r.stdout.splitlines()]


def decodable(path):
    """(frames, usable IP packets) of a capture."""
    n = ok = 0
    with PcapReader(path) as r:
        for lt, _, fr in r:
            n += 1
            ok += not isinstance(decode(lt, fr), int)
    return n, ok


def offline(path, model, cfg=None, **kw):
    flows = []
    p = Pipeline(source=[], model=model, config=cfg or C.Config(), threaded=False, on_flow=flows.append, **kw)
    p.run_file(path)
    return p, flows


def test_flows_jsonl_shape():
    rows = jsonl(DNS, "--output", "flows")
    assert rows
    for r in rows:
        assert list(r) == ["file", "proto", "src", "sport", "dst", "dport", "packets", "bytes", "class", "confidence"]
        assert r["file"] == DNS and r["packets"] >= 1 and r["bytes"] > 0 and 0 <= r["confidence"] <= 1
        if r["proto"] in ("TCP", "UDP"):
            assert isinstance(r["sport"], int) and isinstance(r["dport"], int)
        else:
            assert r["sport"] is None and r["dport"] is None
    assert {"TCP", "ICMP"} <= {r["proto"] for r in rows}
    assert sum(r["packets"] for r in rows) == decodable(DNS)[1]


def test_packets_jsonl_shape_and_consistency_with_flows():
    flows = jsonl(DNS, "--output", "flows")
    pkts = jsonl(DNS, "--output", "packets")
    frames, usable = decodable(DNS)
    assert len(pkts) == usable
    assert [p["index"] for p in pkts] == sorted(p["index"] for p in pkts) and pkts[0]["index"] >= 0
    assert max(p["index"] for p in pkts) < frames
    for p in pkts:
        assert list(p) == ["file", "index", "proto", "src", "sport", "dst", "dport", "length", "class", "confidence"]
    # every packet carries its flow's class; per flow, packets and bytes add up
    by_flow = defaultdict(lambda: [0, 0, set()])
    for p in pkts:
        a, b = (p["src"], p["sport"]), (p["dst"], p["dport"])
        k = (p["proto"],) + (a + b if a <= b else b + a)
        by_flow[k][0] += 1
        by_flow[k][1] += p["length"]
        by_flow[k][2].add(p["class"])
    flow_sum = defaultdict(lambda: [0, 0, set()])
    for f in flows:
        a, b = (f["src"], f["sport"]), (f["dst"], f["dport"])
        k = (f["proto"],) + (a + b if a <= b else b + a)
        flow_sum[k][0] += f["packets"]
        flow_sum[k][1] += f["bytes"]
        flow_sum[k][2].add(f["class"])
    assert {k: v[:2] for k, v in by_flow.items()} == {k: v[:2] for k, v in flow_sum.items()}
    for k, v in by_flow.items():
        assert v[2] == flow_sum[k][2]


def test_summary_equals_flows_per_class():
    flows = jsonl("--output", "flows")  # the bundled sample
    assert {r["file"] for r in flows} == {os.path.basename(f) for f in SAMPLE_FILES}
    per_class = Counter()
    for r in flows:
        per_class[r["class"]] += r["packets"]
    summary = jsonl("--output", "summary")
    assert {r["class"]: r["packets"] for r in summary} == dict(per_class)
    assert sum(r["flows"] for r in summary) == len(flows)


def test_table_and_csv():
    r = run_cli("classify", DNS, "--output", "flows", "--format", "csv")
    lines = r.stdout.splitlines()
    assert lines[0] == "file,proto,src,sport,dst,dport,packets,bytes,class,confidence"
    assert len(lines) == 1 + len(jsonl(DNS, "--output", "flows"))
    t = run_cli("classify", DNS)
    assert t.returncode == 0 and t.stdout.split()[:4] == ["class", "flows", "packets", "bytes"]


def test_unreadable_capture_after_the_readable_ones(tmp_path):
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture at all")
    missing = tmp_path / "missing.pcap"
    r = run_cli("classify", str(junk), DNS, str(missing), "--output", "flows", "--format", "jsonl")
    assert r.returncode != 0
    errs = error_lines(r.stderr)
    assert len(errs) == 2 and "junk.pcap" in errs[0] and "missing.pcap" in errs[1], r.stderr
    assert "Traceback" not in r.stderr
    assert {json.loads(l)["file"] for l in r.stdout.splitlines()} == {DNS}


def test_hostile_captures_no_traceback():
    files = [os.path.join(TEST_DATA, f) for f in ("badpackets.pcap", "fuzz-2021-10-13.pcap",
                                                  "ip_fragmented_garbage.pcap", "kerberos_fuzz.pcapng",
                                                  "ossfuzz_seed_fake_traces_4.pcapng")]
    r = run_cli("classify", *files, "--output", "summary", "--format", "jsonl")
    assert "Traceback" not in r.stderr and r.returncode == 0, r.stderr


def test_packet_mode():
    pkts = jsonl(DNS, "--output", "packets", "--mode", "packet")
    summary = jsonl(DNS, "--output", "summary", "--mode", "packet")
    per_class = Counter(p["class"] for p in pkts)
    assert {r["class"]: r["packets"] for r in summary} == dict(per_class)
    assert len(pkts) == decodable(DNS)[1]


def test_front_door_iterates_flows(model):
    flows = list(Pipeline(source=DNS, model=model))
    assert flows and all(f.label >= 0 for f in flows)
    _, again = offline(DNS, model)
    assert sorted((f.id, f.label, f.packets) for f in flows) == sorted((f.id, f.label, f.packets) for f in again)


def first_payloads(path, k):
    """Per flow key: the first k payload packets' transport bytes, found without the pipeline."""
    out = defaultdict(list)
    with PcapReader(path) as r:
        for lt, _, fr in r:
            d = decode(lt, fr)
            if isinstance(d, int):
                continue
            _v, proto, src, dst, sport, dport, _ip, l4_off, l4_end, data_off = d
            key, _ = flow_key(proto, src, sport, dst, dport)
            if data_off < l4_end and len(out[key]) < k:
                out[key].append(bytes(fr[l4_off:l4_end]))
    return out


def test_flow_decision_rules(model):
    k = 2
    cfg = C.from_dict({"pipeline": {"flow_packets": k}})
    p, flows = offline(DNS, model, cfg)
    other = p.other
    firsts = first_payloads(DNS, k)
    keys = Counter(flow_key(f.proto, f.src, f.sport, f.dst, f.dport)[0] for f in flows)
    checked = 0
    for f in flows:
        assert f.scored <= k and f.prob_sum is None  # decided flows keep no probabilities
        key = flow_key(f.proto, f.src, f.sport, f.dst, f.dport)[0]
        if f.scored == 0:  # never had a payload packet the model saw
            assert f.label == other and f.confidence == 0.0
        elif keys[key] == 1:  # (a key reused after a timeout is two flows: not checked here)
            assert f.scored == len(firsts[key])
            mean = model.classifier.predict(payload_bytes(firsts[key], [0] * f.scored)).mean(0)
            checked += 1
            if mean.max() < p.threshold:
                assert f.label == other
            else:
                assert f.label == int(mean.argmax()) and f.confidence == pytest.approx(float(mean.max()))
    assert checked >= 5
    # counts: every decoded packet under exactly one class
    assert sum(t[0] + t[1] for t in p.tally.values()) == decodable(DNS)[1]
    assert sum(t[4] for t in p.tally.values()) == len(flows)


def test_metrics_sum_every_pipelines_counts(model):
    """/metrics counts every pipeline's packets (a scrape sums their rows); each pipeline's tally is its own."""
    from daemon import metrics as M
    names = ("tc_daemon_packets_total", "tc_daemon_bytes_total", "tc_daemon_flows_total")

    def scrape():
        out = Counter()
        for fam in M.REGISTRY.collect():
            for smp in fam.samples:
                if smp.name in names:
                    out[(smp.name, smp.labels["class"])] += smp.value
        return out

    before = scrape()
    p1, _ = offline(DNS, model)
    p2, _ = offline(next(f for f in SAMPLE_FILES if f != DNS), model)
    after = scrape()
    want = Counter()
    for p in (p1, p2):
        for c, t in p.tally.items():
            want[(names[0], c)] += t[0] + t[1]
            want[(names[1], c)] += t[2] + t[3]
            want[(names[2], c)] += t[4]
    assert sum(want.values()) > 0
    assert {k: v for k, v in (after - before).items() if v} == {k: v for k, v in want.items() if v}
    assert sum(t[0] + t[1] for t in p1.tally.values()) == decodable(DNS)[1]  # p2's packets are not p1's


def test_reject_threshold_sends_flows_to_other(model):
    strict = modelmod.LoadedModel(model.entry, model.classifier, 1.01)
    p, flows = offline(DNS, strict)
    assert {f.label for f in flows} == {p.other}
    lax = modelmod.LoadedModel(model.entry, model.classifier, 0.0)
    p, flows = offline(DNS, lax)
    assert all(f.label != p.other for f in flows if f.scored)


def test_live_threads_equal_offline(model):
    """The replay through capture+classifier threads decides exactly as the offline pass."""
    cfg = C.from_dict({"pipeline": {"queue_packets": 100000}})
    for path in SAMPLE_FILES:
        p_off, _ = offline(path, model, cfg)
        flows = []
        p = Pipeline(source=[ReplaySource(path, speed=0)], model=model, config=cfg, on_flow=flows.append)
        p.start()
        p._threads[0].join(30)
        p.stop()
        assert p.dropped == 0
        assert {c: t for c, t in p.tally.items() if any(t)} == {c: t for c, t in p_off.tally.items() if any(t)}


def at_once(path, model, cfg, chunk=64):
    """offline(), but frames handed over as a ring block hands them: up to `chunk` of one link type
    and within one second, as one buffer with offsets (Pipeline._frames_at_once)."""
    import numpy as np
    from bench.blocks import as_block
    flows = []
    p = Pipeline(source=[], model=model, config=cfg, threaded=False, on_flow=flows.append)
    with PcapReader(path) as r:
        recs = [(lt, ts, bytes(fr)) for lt, ts, fr in r]
    i = 0
    while i < len(recs):
        j = i + 1
        while (j < len(recs) and j - i < chunk and recs[j][0] == recs[i][0]
               and recs[j][1] - recs[i][1] < 1.0):
            j += 1
        buf, view, at, caplen = as_block([fr for _, _, fr in recs[i:j]])
        p._frames_at_once(recs[i][0], buf, view, at, caplen, np.array([ts for _, ts, _ in recs[i:j]]))
        while len(p._queue) >= p.batch_size:
            p._classify_batch()
        i = j
    p.finish()
    return p, flows


def test_frames_at_once_decide_as_frame_by_frame(model):
    """A ring block decoded by numpy and counted per flow gives the same flows, classes and counts as
    the same frames one by one, on every bundled capture (malformed, fuzzed, VLAN, IPv6, ...)."""
    cfg = C.from_dict({"pipeline": {"queue_packets": 100000}})
    paths = SAMPLE_FILES + [os.path.join(TEST_DATA, f) for f in sorted(os.listdir(TEST_DATA))
                            if f.endswith((".pcap", ".pcapng", ".cap"))]
    from daemon import metrics as M
    from daemon.packet import SKIP_REASONS
    skips = lambda: [M.SKIPPED.labels(r)._value.get() for r in SKIP_REASONS]  # noqa: E731
    flows_seen = 0
    for path in paths:
        s0 = skips()
        p1, f1 = offline(path, model, cfg)
        s1 = skips()
        p2, f2 = at_once(path, model, cfg)
        s2 = skips()
        assert [b - a for a, b in zip(s1, s2)] == [b - a for a, b in zip(s0, s1)], path
        assert p2.tally == p1.tally, path
        row = lambda f: (f.key, f.c2s_reverse, f.first, f.last, f.packets, f.bytes, f.label,  # noqa: E731
                         round(f.confidence, 6), f.scored)
        assert sorted(map(row, f2)) == sorted(map(row, f1)), path
        assert p2.table.evicted == p1.table.evicted == 0
        flows_seen += len(f1)
    assert flows_seen > 300


def test_frames_at_once_with_a_table_smaller_than_a_block(model):
    """A flow table that must evict within a block: nothing is lost or counted twice."""
    cfg = C.from_dict({"pipeline": {"queue_packets": 100000, "max_flows": 2}})
    evicted = 0
    for path in SAMPLE_FILES:
        p1, f1 = offline(path, model, cfg)
        p2, f2 = at_once(path, model, cfg)
        assert p2.tally == p1.tally and len(f2) == len(f1) and p2.table.evicted == p1.table.evicted, path
        assert not p2._states  # every flow decided and let go
        evicted += p2.table.evicted
    assert evicted > 0


class Behind:
    """A live source whose frames all arrived long ago (a capture far behind its ring)."""
    name, live, finite = "behind", True, True

    def __init__(self, path):
        with PcapReader(path) as r:
            self.frames = [(lt, fr) for lt, _, fr in r]

    def __iter__(self):
        for lt, fr in self.frames:
            yield lt, 1.0, fr  # monotonic second 1: every frame is overdue on arrival


def watch_batches(p):
    """(thread name, batch size) of every batch the real model runs."""
    seen, predict = [], p.model.classifier.predict

    def observed(x):
        seen.append((threading.current_thread().name, len(x)))
        return predict(x)
    p.model = modelmod.LoadedModel(p.model.entry, copy.copy(p.model.classifier), p.model.threshold)
    p.model.classifier.predict = observed
    return seen


@pytest.mark.parametrize("mode", ["flow", "packet"])
def test_who_runs_the_model(model, mode):
    """Flow mode: the capture thread runs the batches itself (the classifier thread would wait for the
    interpreter lock at each step); packet mode: the classifier thread, beside capture. Decisions equal
    the offline pass either way."""
    cfg = C.from_dict({"pipeline": {"mode": mode, "queue_packets": 100000}})
    path = os.path.join(SAMPLES, "dropbox.pcap")
    p_off, _ = offline(path, model, cfg)
    p = Pipeline(source=[ReplaySource(path, speed=0)], model=model, config=cfg)
    seen = watch_batches(p)
    p.start()
    p._threads[0].join(30)
    end = time.monotonic() + 30
    while p.queued() and time.monotonic() < end:  # left to the threads, not to stop()'s drain
        time.sleep(0.01)
    p.stop()
    threads = Counter(t for t, _ in seen)
    if mode == "flow":
        # all but what was queued when the capture ended (the classifier thread's backstop)
        assert threads["capture-replay"] >= len(seen) - 2, threads
    else:
        assert set(threads) == {"classifier"}, threads
    assert {c: t for c, t in p.tally.items() if any(t)} == {c: t for c, t in p_off.tally.items() if any(t)}


def test_a_capture_behind_still_fills_batches(model):
    """Frames that arrived long ago are all overdue by their arrival time; a batch's deadline runs from
    when its first packet was queued, so the model still sees full batches, not one packet at a time."""
    cfg = C.from_dict({"pipeline": {"mode": "packet", "queue_packets": 100000}})
    p = Pipeline(source=[], model=model, config=cfg)
    p.sources = [Behind(os.path.join(SAMPLES, "dropbox.pcap"))]
    p._inline = True  # as in flow mode: the capture thread decides when a batch is due
    seen = watch_batches(p)
    p.start()
    p._threads[0].join(30)
    p.stop()
    sizes = [n for _, n in seen]
    assert sum(sizes) > 200 and max(sizes) == p.batch_size
    assert sum(sizes) / len(sizes) > 8, sizes


def test_overload_drops_are_counted_and_packets_still_counted(model):
    """A queue of 2 and a model busy for the whole replay: drops, and still every packet counted once."""
    cfg = C.from_dict({"pipeline": {"queue_packets": 2, "batch_size": 1, "batch_timeout_ms": 0}})
    path = os.path.join(SAMPLES, "dropbox.pcap")
    p = Pipeline(source=[ReplaySource(path, speed=0)], model=model, config=cfg)
    p._model_lock.acquire()  # as while a slow model runs: neither thread can start a batch
    p.start()
    p._threads[0].join(30)
    p._model_lock.release()
    p.stop()
    assert p.dropped > 0
    assert len(p._queue) == 0 and not p._states
    assert sum(t[0] + t[1] for t in p.tally.values()) == decodable(path)[1]


def test_model_swap_keeps_counting(model):
    cfg = C.Config()
    p = Pipeline(source=[], model=model, config=cfg, threaded=False)
    with PcapReader(DNS) as r:
        frames = list(r)
        for i, (lt, ts, fr) in enumerate(frames):
            if i == len(frames) // 2:
                p.set_model(modelmod.LoadedModel(model.entry, model.classifier, model.threshold), cfg.pipeline)
            p._packet(lt, ts, fr, 0.0, i)
            if len(p._queue) >= p.batch_size:
                p._classify_batch()
        p.finish()
    assert sum(t[0] + t[1] for t in p.tally.values()) == decodable(DNS)[1]
