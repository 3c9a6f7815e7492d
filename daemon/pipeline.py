"""Frames -> flows -> model -> decisions -> counts: one pipeline for `run` and `classify`.

    capture thread(s)                          classifier thread
    frame -> decode -> flow table --(bounded queue)--> payload_bytes -> TFLite
          decided flow: count now                      -> per-flow decision -> count

`Pipeline(source=..., model=..., config=...)` is the one front door (as
nfstream's NFStreamer): a capture file is read in this thread, model batches
run inline, and iterating the pipeline yields finished flows; live sources
(AF_PACKET, replay, pyshark) get a capture thread each and a classifier thread
behind a bounded queue (`start()` / `stop()`): in flow mode a capture thread
runs the batches that fall due itself and the classifier thread is the
backstop while capture waits for frames; in packet mode the classifier thread
runs them, beside capture. Scheduling is all that differs:
decisions come from the same methods, so `classify` on a capture and `run` on
its replay count the same packets under the same classes (unless the queue
overflowed, which the metrics say).

Decision rules (flow mode, the default):
- the first k payload packets of a flow (k = pipeline.flow_packets) go to the
  model; the flow's class is the argmax of their mean probabilities and its
  confidence that mean's maximum; under the reject threshold it is 'other';
- a flow that ends (idle/active timeout, LRU eviction, end of capture,
  shutdown) with fewer than k scored packets is decided on those it has; one
  that never had a payload packet the model saw (bare SYN/ACK scans, ICMP
  without data, ...) is 'other' with confidence 0;
- packets of an undecided flow are kept as per-direction counts (not packets)
  and counted under the class when the decision is made; later packets are
  counted at once, without the model.

Packet mode: every payload packet gets its own class (argmax, 'other' under
the threshold); a packet without payload (or one dropped from the queue) is
counted under the class of its flow's latest payload packet before it, or
'other' if the flow had none. A flow's class (flows_total, `--output flows`)
is then the argmax of the mean over all its scored packets.

Packets a full queue keeps from the model are still counted (under their
flow's class): tc_daemon_dropped_packets_total{reason="queue_full"} says how
many decisions were made on fewer packets, not how many went uncounted.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from contextlib import nullcontext
from itertools import repeat
from typing import Callable, Optional

import numpy as np

from . import metrics as M
from .capture.pcapfile import PcapReader
from .features import N_BYTES, payload_bytes
from .flows import FlowTable, flow_key, flow_keys
from .packet import SKIP_REASONS, decode, decode_block

log = logging.getLogger("tc-daemon")


class _State:
    """Per-flow bookkeeping beside flows.Flow while its packets go to the model: queue membership.
    Flow mode makes one only at a flow's first payload packet: a flow without payload (a scan's SYN, a
    bare handshake) costs its Flow alone, and it is counted from the Flow's own per-direction totals."""
    __slots__ = ("queued", "inflight", "ended", "last", "last_class", "last_conf")

    def __init__(self):
        self.queued = 0         # packets sent to the queue
        self.inflight = 0       # of those, not yet scored
        self.ended = False      # the flow table let go of it while packets were in flight
        self.last = None        # packet mode: the flow's latest queued entry while in flight
        self.last_class = -1    # packet mode: class of the flow's latest scored packet
        self.last_conf = 0.0


class _Entry:
    """A packet waiting for the model: a copy of its IP payload, not the frame."""
    __slots__ = ("flow", "state", "data", "t_cap", "d", "nbytes", "trail", "cls", "conf")

    def __init__(self, flow, state, data, t_cap, d, nbytes):
        self.flow, self.state, self.data, self.t_cap, self.d, self.nbytes = flow, state, data, t_cap, d, nbytes
        self.trail = None       # packet mode: [pkts c2s, pkts s2c, bytes c2s, bytes s2c] counted with it
        self.cls, self.conf = -1, 0.0


class Pipeline:
    def __init__(self, source=None, model=None, config=None, on_flow: Optional[Callable] = None,
                 record: Optional[Callable] = None, threaded: Optional[bool] = None):
        """`source`: a capture path, a live source object, or a list of live sources.
        `model`: a daemon.model.LoadedModel (default: chosen from `config`).
        `on_flow(flow)`: called once per finished, decided flow.
        `record(index, flow, direction, nbytes, ref)`: per decoded packet (offline `--output packets`)."""
        from . import config as cfgmod
        from . import model as modelmod
        self.config = config or cfgmod.Config()
        pc = self.config.pipeline
        self.model = model or modelmod.from_config(self.config)
        if isinstance(source, str):
            self.sources = [source]
            self.threaded = False if threaded is None else threaded
        else:
            self.sources = list(source) if isinstance(source, (list, tuple)) else ([source] if source else [])
            self.threaded = True if threaded is None else threaded
        self.on_flow, self.record = on_flow, record
        self.packet_mode = pc.mode == "packet"
        self._inline = not self.packet_mode  # flow mode: capture threads run the batches (_capture_loop)
        self.table = FlowTable(pc.max_flows, pc.idle_timeout, pc.active_timeout, on_expire=self._ended)
        self._states = {}
        self._queue = deque()
        self._opened = 0.0  # when the queue's oldest batch began (monotonic)
        self._configure(pc)
        self._lock = threading.Lock() if self.threaded else nullcontext()
        self._model_lock = threading.Lock()  # held while a batch runs; also by whoever swaps the model
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads = []
        self._classifier = None
        self._stop_classifier = False
        self._counts = {}    # class name -> this pipeline's metric rows (packets, bytes, flows)
        self.heartbeat = time.monotonic()
        self.reader_errors = None
        self.capture_failed = False
        self._captured = {}  # source name -> this pipeline's captured-frames row
        self.dropped = 0     # packets that skipped the model, all reasons
        self._skip = [M.SKIPPED.labels(r) for r in SKIP_REASONS]
        self._queue_full = M.DROPPED.labels("queue_full")
        self._set_classes(self.model)
        M.FLOW_TABLE.set_function(lambda: len(self.table))

    # --- configuration and model ------------------------------------------------------

    def _configure(self, pc):
        self.k = pc.flow_packets
        self.batch_size = pc.batch_size
        self.batch_timeout = pc.batch_timeout_ms / 1000.0
        self.queue_cap = pc.queue_packets
        self.block_frames = pc.block_frames or 1 << 62
        self._x = np.zeros((self.batch_size, N_BYTES), np.uint8)  # reused by every batch

    def _set_classes(self, model):
        names = model.classes + [M.OTHER]
        M.init_model(model.entry)
        self.class_names = names
        self.other = len(names) - 1
        self.threshold = model.threshold
        for c in names:  # a class's rows outlive a model swap that keeps the class
            if c not in self._counts:
                self._counts[c] = (M.PACKETS.row(c), M.BYTES.row(c), M.FLOWS.row(c))
        rows = [self._counts[c] for c in names]
        self._pk = [r[0] for r in rows]  # [c2s, s2c] per class, added to in place
        self._by = [r[1] for r in rows]
        self._fl = [r[2] for r in rows]

    def set_model(self, model, pipeline_config=None):
        """Swap in a new model (and pipeline settings) between two batches (SIGHUP reload)."""
        with self._model_lock, self._lock:
            old_names = self.class_names
            self.model = model
            self._set_classes(model)
            if pipeline_config is not None:
                pc = pipeline_config
                if (pc.mode == "packet") != self.packet_mode:
                    log.warning("pipeline.mode changed: takes effect at the next restart")
                self._configure(pc)
                self.table.max_flows, self.table.idle_timeout = pc.max_flows, pc.idle_timeout
                self.table.active_timeout = pc.active_timeout
            if old_names != self.class_names:
                # decided flows keep their class by name; unknown to the new model: 'other'.
                # Half-scored flows start over: old probabilities do not add to new ones.
                where = {c: i for i, c in enumerate(self.class_names)}
                remap = [where.get(c, self.other) for c in old_names]
                for f in self.table.values():
                    if f.label >= 0:
                        f.label = remap[f.label]
                    else:
                        f.prob_sum, f.scored = None, 0
                for st in self._states.values():
                    if st.last_class >= 0:
                        st.last_class = remap[st.last_class]

    @property
    def tally(self) -> dict:
        """This pipeline's counts by class name: [packets c2s, s2c, bytes c2s, s2c, flows]."""
        return {c: [pk[0], pk[1], by[0], by[1], fl[0]] for c, (pk, by, fl) in self._counts.items()}

    @property
    def captured(self) -> dict:
        """Frames read by this pipeline, by source name."""
        return {name: r[0] for name, r in self._captured.items()}

    def class_name(self, index: int) -> Optional[str]:
        return self.class_names[index] if index >= 0 else None

    # --- per packet (capture thread, or the caller's thread offline) ------------------

    def _count(self, c, d, pkts, nbytes):
        if pkts:
            self._pk[c][d] += pkts
            self._by[c][d] += nbytes

    def _packet(self, linktype, ts, frame, t_cap, index=-1):
        r = decode(linktype, frame)
        if r.__class__ is int:
            self._skip[-r - 1].inc()
            return
        _v, proto, src, dst, sport, dport, ip_off, l4_off, l4_end, data_off = r
        key, rev = flow_key(proto, src, sport, dst, dport)
        nbytes = l4_end - ip_off
        flow, c2s = self.table.get(key, rev, ts)
        d = 0 if c2s else 1
        flow.packets += 1
        flow.bytes += nbytes
        payload = data_off < l4_end  # the dataset's definition of a payload packet
        ref = None
        if not self.packet_mode:
            if flow.label >= 0:  # decided: the common case at line rate, counted and done
                self._count(flow.label, d, 1, nbytes)
            else:  # undecided: counted from the flow's totals once decided
                if d:
                    flow.s2c_packets += 1
                    flow.s2c_bytes += nbytes
                if payload:
                    st = self._state(flow)
                    if st.queued < self.k and self._enqueue(flow, st, frame, l4_off, l4_end, t_cap, d, nbytes):
                        st.queued += 1
        else:
            st = self._state(flow)
            e = self._enqueue(flow, st, frame, l4_off, l4_end, t_cap, d, nbytes) if payload else None
            if e is not None:
                st.last = ref = e
            elif st.last is not None:  # its class is that of the payload packet before it, still in flight
                ref = st.last
                t = ref.trail or [0, 0, 0, 0]
                t[d] += 1
                t[2 + d] += nbytes
                ref.trail = t
            else:
                c = st.last_class if st.last_class >= 0 else self.other
                self._count(c, d, 1, nbytes)
                ref = (c, st.last_conf)
        if self.record is not None:
            self.record(index, flow, d, nbytes, ref)

    def _frames_at_once(self, linktype, buf, view, at, caplen, ts):
        """Flow mode: many frames in one go (a full ring block), at[i] where frame i starts in `buf`
        (numpy) and `view` (memoryview) of the same bytes. Headers are decoded by numpy, packets are
        grouped by flow, and Python runs once per flow, not per packet: one key, one lookup, counts
        added per direction; only an undecided flow's first payload packets (for the model) are taken
        one by one. Frames decode_block leaves (VLAN, options, extension headers, ...) go frame by frame
        after the rest. Against _packet frame by frame, only which flow an LRU-full table evicts and a
        timeout falling within the block (a few ms) can differ."""
        if len(at) >= self.table.max_flows:
            # a table smaller than the block could evict a flow looked up earlier in it, before its
            # packets are counted: frame by frame instead (only with a max_flows far below the default)
            for a, n, t in zip(at.tolist(), caplen.tolist(), ts.tolist()):
                self._packet(linktype, t, view[a:a + n], t)
            return
        groups, rest = decode_block(linktype, buf, at, caplen)
        for g in groups:
            self._flows_at_once(g, view, at[g.idx], ts[g.idx])
        for i in rest.tolist():
            a, t = int(at[i]), float(ts[i])
            self._packet(linktype, t, view[a:a + int(caplen[i])], t)

    def _flows_at_once(self, g, view, at, ts):
        keys, rev = flow_keys(g.proto, g.src, g.sport, g.dst, g.dport)
        rows = keys.view(f"V{keys.shape[1]}").ravel()  # one opaque row per key: unique compares bytes
        _, first, inv, cnt = np.unique(rows, return_index=True, return_inverse=True, return_counts=True)
        order = np.argsort(inv, kind="stable")  # packets by flow, each flow's in arrival order
        end = np.cumsum(cnt)
        seq = np.argsort(first)  # flows in the order of their first packets
        f0 = first[seq]
        nbytes = g.l4_end - g.ip_off
        get, m = self.table.get, len(first)
        flows = [None] * m
        c2s_rev = np.empty(m, bool)
        for j, key, r, t0, t1 in zip(seq.tolist(), rows[f0].tolist(), rev[f0].tolist(), ts[f0].tolist(),
                                     ts[order[end[seq] - 1]].tolist()):
            f = get(key, r, t0)[0]
            f.last = t1
            flows[j] = f
            c2s_rev[j] = f.c2s_reverse
        d = (rev != c2s_rev[inv]).astype(np.intp)  # 0: client to server, as _packet's d
        per = np.bincount(inv * 2 + d, minlength=2 * m).reshape(m, 2).tolist()
        per_bytes = np.bincount(inv * 2 + d, nbytes, minlength=2 * m).astype(np.int64).reshape(m, 2).tolist()
        has_payload = g.data_off < g.l4_end
        with_payload = np.bincount(inv, has_payload, minlength=m).tolist()
        payload = has_payload[order]
        start = (end - cnt).tolist()
        state, k, count, enqueue = self._state, self.k, self._count, self._enqueue
        for j in seq.tolist():
            f = flows[j]
            (p0, p1), (b0, b1) = per[j], per_bytes[j]
            f.packets += p0 + p1
            f.bytes += b0 + b1
            if f.label >= 0:  # decided: the common case at line rate
                count(f.label, 0, p0, b0)
                count(f.label, 1, p1, b1)
                continue
            f.s2c_packets += p1  # undecided: counted from the flow's totals once decided
            f.s2c_bytes += b1
            if not with_payload[j]:
                continue
            st = state(f)
            if st.queued < k:  # its first payload packets, in order, go to the model
                lo, hi = start[j], start[j] + p0 + p1
                for i in order[lo:hi][payload[lo:hi]].tolist():
                    a = int(at[i])
                    if enqueue(f, st, view, a + g.l4_off, a + int(g.l4_end[i]), float(ts[i]), int(d[i]),
                               int(nbytes[i])):
                        st.queued += 1
                        if st.queued >= k:
                            break

    def _state(self, flow):
        st = self._states.get(flow.id)
        if st is None:
            st = self._states[flow.id] = _State()
        return st

    def _enqueue(self, flow, st, frame, l4_off, l4_end, t_cap, d, nbytes):
        q = self._queue
        if len(q) >= self.queue_cap:
            self._queue_full.inc()
            self.dropped += 1
            return None
        e = _Entry(flow, st, bytes(frame[l4_off:min(l4_end, l4_off + N_BYTES)]), t_cap, d, nbytes)
        st.inflight += 1
        q.append(e)
        if len(q) == 1:
            # a batch's deadline runs from when its first packet was queued, not from the packet's
            # arrival: a capture that is behind would otherwise find every packet overdue and run
            # batches of one, falling further behind
            self._opened = time.monotonic()
            if self.threaded:
                self._wake.set()
        elif self.threaded and len(q) >= self.batch_size and not self._inline:
            self._wake.set()
        return e

    # --- decisions (classifier thread, or inline offline) -----------------------------

    def _classify_batch(self, wait: bool = True) -> int:
        """Run the model on up to batch_size queued packets; returns how many. With wait=False, only if no
        other thread is running the model now (the capture thread then leaves it to the classifier)."""
        lock = self._model_lock
        if not lock.acquire(wait):
            return 0
        try:
            q = self._queue
            n = min(len(q), self.batch_size)
            if not n:
                return 0
            items = [q.popleft() for _ in range(n)]
            t0 = time.monotonic()
            if q:
                self._opened = t0  # what is left is the next batch, opened now
            try:
                x = payload_bytes([e.data for e in items], repeat(0), out=self._x)
                probs = self.model.classifier.predict(x)
            except Exception as err:  # a model that fails must not take the capture down with it
                log.error("inference failed on a batch of %d: %s", n, str(err).splitlines()[0] if str(err) else
                          type(err).__name__)
                M.DROPPED.labels("model_error").inc(n)
                self.dropped += n
                probs = None
            else:
                M.INFERENCE_LATENCY.observe(time.monotonic() - t0)
                M.BATCH_SIZE.observe(n)
            with self._lock:
                self._apply(items, probs)
        finally:
            lock.release()
        return n

    def _apply(self, items, probs):
        now = time.monotonic()
        thr, other, k = self.threshold, self.other, self.k
        for i, e in enumerate(items):
            flow, st = e.flow, e.state
            st.inflight -= 1
            if probs is not None:
                p = probs[i]
                if flow.prob_sum is None:
                    flow.prob_sum = p.astype(np.float64)
                else:
                    flow.prob_sum += p
                flow.scored += 1
                M.DECISION_LATENCY.observe(now - e.t_cap)
            if not self.packet_mode:
                if flow.label < 0 and st.inflight == 0 and (st.queued >= k or st.ended):
                    self._decide(flow, st)
                continue
            if probs is not None:
                c = int(p.argmax())
                conf = float(p[c])
                if conf < thr:
                    c = other
            else:
                c, conf = other, 0.0
            e.cls, e.conf = c, conf
            self._count(c, e.d, 1, e.nbytes)
            if e.trail:
                t = e.trail
                self._count(c, 0, t[0], t[2])
                self._count(c, 1, t[1], t[3])
            st.last_class, st.last_conf = c, conf
            if st.last is e:
                st.last = None
            if st.ended and st.inflight == 0:
                self._decide(flow, st)

    def _decide(self, flow, st):
        """The flow's class from its scored packets; count what waited for it."""
        if flow.scored:
            mean = flow.prob_sum / flow.scored
            c = int(mean.argmax())
            conf = float(mean[c])
            if conf < self.threshold:
                c = self.other
        else:
            c, conf = self.other, 0.0
        flow.label, flow.confidence = c, conf
        flow.prob_sum = None  # decided: only the class and confidence are read from here on
        if not self.packet_mode:  # flow mode counts nothing of an undecided flow until here
            self._count(c, 0, flow.packets - flow.s2c_packets, flow.bytes - flow.s2c_bytes)
            self._count(c, 1, flow.s2c_packets, flow.s2c_bytes)
        self._fl[c][0] += 1
        self._states.pop(flow.id, None)
        if (st is None or st.ended or self.packet_mode) and self.on_flow is not None:
            self.on_flow(flow)

    def _ended(self, flow):
        """The flow table let go of a flow (timeout, eviction, drain)."""
        st = self._states.get(flow.id)
        if flow.label >= 0 and not self.packet_mode:
            if self.on_flow is not None:
                self.on_flow(flow)
            return
        if st is None:  # flow mode, no payload packet: nothing in flight, decided now
            self._decide(flow, None)
            return
        st.ended = True
        if st.inflight == 0:
            self._decide(flow, st)
        # else: the classifier decides it when its last packet is scored

    # --- offline: a capture file in this thread ---------------------------------------

    def run_file(self, path: str):
        """Classify one capture; flows end with it. CaptureError if it cannot be read at all."""
        with PcapReader(path) as reader:
            self.reader_errors = reader.errors
            packet, classify, q, b = self._packet, self._classify_batch, self._queue, self.batch_size
            mono = time.monotonic
            for i, (lt, ts, frame) in enumerate(reader):
                packet(lt, ts, frame, mono(), i)
                if len(q) >= b:
                    classify()
            self.finish()

    def finish(self):
        """Score what is queued, then end every flow (end of a capture, or shutdown)."""
        while self._queue:
            self._classify_batch()
        with self._lock:
            self.table.drain()

    def __iter__(self):
        """Offline: finished flows (flows.Flow with label/confidence), capture by capture."""
        done = []
        self.on_flow = done.append
        for path in self.sources:
            with PcapReader(path) as reader:
                self.reader_errors = reader.errors
                for i, (lt, ts, frame) in enumerate(reader):
                    self._packet(lt, ts, frame, time.monotonic(), i)
                    if len(self._queue) >= self.batch_size:
                        self._classify_batch()
                    if done:
                        yield from done
                        done.clear()
                self.finish()
                yield from done
                done.clear()

    # --- live: threads ------------------------------------------------------------------

    def start(self):
        self._classifier = threading.Thread(target=self._classifier_loop, name="classifier", daemon=True)
        self._classifier.start()
        for src in self.sources:
            t = threading.Thread(target=self._capture_loop, args=(src,), name=f"capture-{src.name}", daemon=True)
            t.start()
            self._threads.append(t)

    def _capture_loop(self, src):
        captured = self._captured.get(src.name)
        if captured is None:  # a reopened source goes on counting in its row
            captured = self._captured[src.name] = M.CAPTURED.row(src.name)
        packet, lock, stop = self._packet, self._lock, self._stop
        q, mono, classify = self._queue, time.monotonic, self._classify_batch
        inline = self._inline
        # flow mode over a ring: a block at a time (big ones decoded at once, _frames_at_once)
        blocks = getattr(src, "blocks", None) if inline else None
        try:
            for rec in (blocks() if blocks else src):
                if stop.is_set():
                    break
                if rec is None:
                    pass
                elif rec.__class__ is tuple:
                    lt, ts, frame = rec
                    captured[0] += 1
                    with lock:  # a live source's ts is monotonic: its arrival time, the start of latency
                        packet(lt, ts, frame, ts)
                else:  # a ring block (RingBlock)
                    got = 0
                    with lock:
                        if rec.n >= self.block_frames:
                            at, caplen, ts = rec.arrays()
                            self._frames_at_once(rec.linktype, rec.ring, rec.view, at, caplen, ts)
                            got = len(at)
                        else:
                            for lt, ts, frame in rec.frames():
                                packet(lt, ts, frame, ts)
                                got += 1
                    captured[0] += got
                # Flow mode: a batch that is due runs here, in the capture thread. On a busy interface
                # this thread holds the interpreter lock, and a batch run by the classifier thread
                # waited up to the switch interval (5 ms) for it at each of its steps (over recv_into,
                # p99 at 50k packets/s went from 25-30 to 7.5-15 ms: docs/performance.md). Packet mode
                # keeps the model on the classifier thread, beside capture on the other core: there
                # the model is most of the work. Every due batch runs before the next block: the queue's
                # packets are older than the ring's (one batch a block left a burst's tail waiting).
                while inline and q and (len(q) >= self.batch_size or mono() - self._opened >= self.batch_timeout):
                    if not classify(False):
                        break
        except Exception as err:  # a capture bug must be loud, once, and not kill the daemon silently
            log.error("capture on %s stopped: %s: %s", src.name, type(err).__name__, err)
            self.capture_failed = True
            return
        finally:
            close = getattr(src, "close", None)
            if close:
                close()
        if getattr(src, "finite", False) and not stop.is_set():
            log.info("%s: end of capture; all its flows ended", src.name)
            self.end_flows()

    def end_flows(self):
        """End every flow now (the classifier decides those with packets in flight)."""
        with self._lock:
            self.table.drain()

    def _classifier_loop(self):
        q, wake, mono = self._queue, self._wake, time.monotonic
        while not self._stop_classifier:
            self.heartbeat = mono()
            if not q:
                wake.wait(0.5)
                wake.clear()
                continue
            if self._inline:
                # flow mode: the capture thread runs batches; this thread is the backstop for a capture
                # that is waiting for frames (it sees a deadline only when a frame comes), a millisecond
                # after the batch fell due: a busy capture thread has run it by then
                while q:
                    rem = self._opened + self.batch_timeout + 0.001 - mono()
                    if rem <= 0:
                        break
                    wake.wait(rem)
                    wake.clear()
            else:
                deadline = self._opened + self.batch_timeout
                while len(q) < self.batch_size:
                    rem = deadline - mono()
                    if rem <= 0:
                        break
                    wake.wait(rem)
                    wake.clear()
            self._classify_batch()

    def tick(self, now: Optional[float] = None):
        """Main-loop housekeeping: end idle flows."""
        with self._lock:
            self.table.expire_idle(time.monotonic() if now is None else now)

    def alive(self, max_age: float) -> bool:
        """False when the classifier thread has not looped for max_age seconds (for the watchdog)."""
        return self._classifier is None or (self._classifier.is_alive()
                                            and time.monotonic() - self.heartbeat < max_age)

    def stop(self, drain_seconds: float = 5.0):
        """Stop capture, classify what is queued (within drain_seconds), end all flows."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2.0)
        deadline = time.monotonic() + drain_seconds
        self._stop_classifier = True
        self._wake.set()
        if self._classifier is not None:
            self._classifier.join(timeout=drain_seconds)
        while self._queue and time.monotonic() < deadline:
            self._classify_batch()
        if self._queue:
            items = list(self._queue)
            self._queue.clear()
            M.DROPPED.labels("shutdown").inc(len(items))
            self.dropped += len(items)
            with self._lock:
                self._apply(items, None)
        with self._lock:
            self.table.drain()

    def queued(self) -> int:
        return len(self._queue)


def cli_classify(a):
    """`tc-daemon classify` (daemon/classify.py holds the output side)."""
    from . import classify
    return classify.main(a)
