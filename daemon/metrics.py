"""Every Prometheus metric of the daemon, declared once, and the /metrics server.

A dedicated registry (not prometheus_client's global one) so that only these
series are exported. Label values come only from the model's class list plus
'other', and from the fixed enums below (directions, drop and skip reasons)
or the configured interface names: never addresses. `init_*` creates every
label combination at 0, so series exist from the first scrape and rate()
works from the first packet.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import socketserver
import ssl
import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics,
                               make_wsgi_app, start_http_server)
from prometheus_client.core import CounterMetricFamily

from . import __version__
from .packet import SKIP_REASONS

disable_created_metrics()  # *_created series double the series count for nothing we graph

OTHER = "other"
DIRECTIONS = ("c2s", "s2c")  # client-to-server = the direction of the flow's first packet
DROP_REASONS = (
    "queue_full",   # the classifier queue was full: the packet skipped the model (it is still counted)
    "model_error",  # inference raised: the batch's packets skipped the model
    "shutdown",     # still queued when the drain deadline passed at exit
)
# 1 us .. 10 s, 1-2.5-5 per decade
# 1-2.5-5 per decade, plus steps around the 20 ms decision target (issue 7) so that its p99 is read
# from the histogram to a few ms rather than to the next decade's 25 or 50 ms
LATENCY_BUCKETS = tuple(sorted({m * 10.0 ** e for e in range(-6, 1) for m in (1, 2.5, 5)}
                               | {0.0075, 0.015, 0.02, 0.03, 0.04, 0.075, 10.0}))
BATCH_BUCKETS = tuple(2 ** i for i in range(11))  # 1 .. 1024

REGISTRY = CollectorRegistry(auto_describe=True)



class ListCounter:
    """A counter family kept in plain lists and read at scrape time, for the per-packet paths:
    adding to a list item cost 0.1 us where prometheus_client's Counter, which takes a lock per
    increment, cost 0.9 us (timeit on the 2-core x86 VM of docs/bench.json, loaded), and packets
    and bytes are counted for every packet. `row(*labels)` is a list of one's own to add to (one
    slot per value of the last label, `slots`, e.g. the directions, or a single slot); a scrape
    sums every row of the same labels. So a pipeline's rows are also its own counts (what
    `classify` prints) without counting each packet twice, and two pipelines never write one row."""

    def __init__(self, name, documentation, labelnames, slots=None, registry=REGISTRY):
        self.name, self.documentation, self.labelnames, self.slots = name, documentation, labelnames, slots
        self._rows = {}  # label values -> [row, ...]
        registry.register(self)

    def touch(self, *labelvalues):
        """The series exists (at 0) from now on."""
        self._rows.setdefault(labelvalues, [])

    def row(self, *labelvalues) -> list:
        r = [0] * (len(self.slots) if self.slots else 1)
        self._rows.setdefault(labelvalues, []).append(r)
        return r

    def collect(self):
        fam = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        zero = [0] * (len(self.slots) if self.slots else 1)
        for key, rows in list(self._rows.items()):
            total = [sum(col) for col in zip(*rows)] or zero
            if self.slots:
                for slot, v in zip(self.slots, total):
                    fam.add_metric([*key, slot], v)
            else:
                fam.add_metric(list(key), total[0])
        yield fam

    def describe(self):
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)


PACKETS = ListCounter("tc_daemon_packets", "IP packets by decided class and direction (c2s = direction of the "
                      "flow's first packet); a flow's packets are counted when its decision is made",
                      ["class", "direction"], DIRECTIONS)
BYTES = ListCounter("tc_daemon_bytes", "IP bytes (IP header included, as captured) by class and direction",
                    ["class", "direction"], DIRECTIONS)
FLOWS = ListCounter("tc_daemon_flows", "Flows by decided class", ["class"])
DECISION_LATENCY = Histogram("tc_daemon_decision_latency_seconds", "Capture to class known, for each packet "
                             "that went through the model", buckets=LATENCY_BUCKETS, registry=REGISTRY)
INFERENCE_LATENCY = Histogram("tc_daemon_inference_latency_seconds", "Feature extraction and model run, per batch",
                              buckets=LATENCY_BUCKETS, registry=REGISTRY)
BATCH_SIZE = Histogram("tc_daemon_batch_size", "Packets per model run", buckets=BATCH_BUCKETS, registry=REGISTRY)
DROPPED = Counter("tc_daemon_dropped_packets", "Packets that skipped the model, by reason (they are still "
                  "counted under their flow's class)", ["reason"], registry=REGISTRY)
SKIPPED = Counter("tc_daemon_skipped_packets", "Frames not classified because they are not usable IP, by reason",
                  ["reason"], registry=REGISTRY)
KERNEL_DROPS = Counter("tc_daemon_kernel_drops", "Frames the kernel dropped before the daemon read them "
                       "(PACKET_STATISTICS)", ["interface"], registry=REGISTRY)
KERNEL_PACKETS = Counter("tc_daemon_kernel_packets", "Frames the kernel handed to the capture socket, its drops "
                         "included (PACKET_STATISTICS); = captured + kernel drops once the daemon has read what "
                         "the kernel gave it", ["interface"], registry=REGISTRY)
RING_HELD = Counter("tc_daemon_ring_held_frames", "Frames read from a ring block the kernel had not handed over: "
                    "still open a poll wait after they arrived, or left behind (its retire timer should hand a "
                    "block over within ms; docs/reliability.md)", ["interface"], registry=REGISTRY)
RING_LOST = Counter("tc_daemon_ring_lost_blocks", "Ring blocks the kernel reused before the daemon had read "
                    "them: their frames are lost and counted by the kernel as handed over, not dropped "
                    "(docs/reliability.md)", ["interface"], registry=REGISTRY)
CAPTURED = ListCounter("tc_daemon_captured_packets", "Frames read from each capture source", ["interface"])
FLOW_TABLE = Gauge("tc_daemon_flow_table_entries", "Flows in the flow table", registry=REGISTRY)
MODEL_INFO = Gauge("tc_daemon_model_info", "The model in use (value 1)",
                   ["name", "family", "params", "classes", "quantization"], registry=REGISTRY)
BUILD_INFO = Gauge("tc_daemon_build_info", "tc-daemon version (value 1)", ["version"], registry=REGISTRY)
LAST_RELOAD = Gauge("tc_daemon_last_reload_timestamp_seconds", "Unix time of the last config/model load "
                    "(the start counts as one)", registry=REGISTRY)
LAST_RELOAD_OK = Gauge("tc_daemon_last_reload_success", "1 if the last load succeeded, 0 if the old model and "
                       "config stayed in use", registry=REGISTRY)
CAPTURE_UP = Gauge("tc_daemon_capture_up", "1 while the capture on this interface is open", ["interface"],
                   registry=REGISTRY)
CAPTURE_REOPENS = Counter("tc_daemon_capture_reopens", "Times a capture was reopened after its interface went "
                          "away or down", ["interface"], registry=REGISTRY)

BUILD_INFO.labels(__version__).set(1)
for _r in DROP_REASONS:
    DROPPED.labels(_r)
for _r in SKIP_REASONS:
    SKIPPED.labels(_r)
_model_labels = None


def init_model(entry: dict):
    """Class series at 0 and model_info for a (new) model; older classes' series stay."""
    global _model_labels
    classes = list(entry["classes"]) + [OTHER]
    for c in classes:
        FLOWS.touch(c)
        PACKETS.touch(c)
        BYTES.touch(c)
    labels = (str(entry.get("name", "?")), str(entry.get("family", "?")), str(entry.get("params", 0)),
              ",".join(entry["classes"]), str(entry.get("quantization", "?")))
    if _model_labels and _model_labels != labels:
        MODEL_INFO.remove(*_model_labels)
    MODEL_INFO.labels(*labels).set(1)
    _model_labels = labels


def init_interface(name: str):
    CAPTURED.touch(name)
    KERNEL_DROPS.labels(name)
    KERNEL_PACKETS.labels(name)
    RING_HELD.labels(name)
    RING_LOST.labels(name)
    CAPTURE_REOPENS.labels(name)
    CAPTURE_UP.labels(name).set(0)


# --- the /metrics endpoint ----------------------------------------------------------

class _Quiet(WSGIRequestHandler):
    def log_message(self, *args):  # no access log: one line per scrape would flood the journal
        pass


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


def _basic_auth(app, username: str, password_sha256: str):
    want_user, want_pw = username.encode(), bytes.fromhex(password_sha256)

    def guarded(environ, start_response):
        ok = False
        header = environ.get("HTTP_AUTHORIZATION", "")
        if header.startswith("Basic "):
            try:
                user, _, pw = base64.b64decode(header[6:], validate=True).partition(b":")
                ok = hmac.compare_digest(user, want_user) & hmac.compare_digest(
                    hashlib.sha256(pw).digest(), want_pw)
            except ValueError:
                ok = False
        if not ok:
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="tc-daemon"'),
                                                ("Content-Type", "text/plain")])
            return [b"unauthorized\n"]
        return app(environ, start_response)
    return guarded


def serve(host: str, port: int, cert_file=None, key_file=None, username=None, password_sha256=None):
    """Start /metrics in a daemon thread; returns an object with shutdown(). OSError if the port is taken.

    Without basic auth this is prometheus_client's own start_http_server (TLS
    through its certfile/keyfile); with it, the same WSGI app behind a check.
    """
    if not username:
        httpd, _ = start_http_server(port, addr=host, registry=REGISTRY, certfile=cert_file, keyfile=key_file)
        return httpd
    app = _basic_auth(make_wsgi_app(REGISTRY), username, password_sha256)
    server_cls = _ThreadingServer
    if ":" in host:
        import socket

        class server_cls(_ThreadingServer):  # noqa: N801
            address_family = socket.AF_INET6
    httpd = make_server(host, port, app, server_cls, handler_class=_Quiet)
    if cert_file:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_file, key_file)
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True).start()
    return httpd
