"""`tc-daemon classify`: captures through the pipeline, flows/packets/summary out.

The pipeline is the live one (daemon.pipeline), run in this thread: what this
prints per class is what /metrics would count for the same packets.
jsonl flows: {file, proto, src, sport, dst, dport, packets, bytes, class, confidence};
jsonl packets: {file, index, proto, src, sport, dst, dport, length, class, confidence}
where index is the frame's 0-based position in its capture (frames that are not
usable IP are skipped, so indexes have gaps) and length the IP bytes as captured.
"""
from __future__ import annotations

import csv
import ipaddress
import json
import os
import sys

from .capture.pcapfile import CaptureError, sniff_format

PROTO_NAMES = {1: "ICMP", 2: "IGMP", 6: "TCP", 17: "UDP", 41: "IPv6", 47: "GRE", 50: "ESP", 51: "AH",
               58: "ICMPv6", 89: "OSPF", 112: "VRRP", 132: "SCTP"}
PORT_PROTOS = (6, 17, 132)
SAMPLE_DIR = os.path.join(os.path.dirname(__file__), "data")
FLOW_FIELDS = ("file", "proto", "src", "sport", "dst", "dport", "packets", "bytes", "class", "confidence")
PACKET_FIELDS = ("file", "index", "proto", "src", "sport", "dst", "dport", "length", "class", "confidence")
SUMMARY_FIELDS = ("class", "flows", "packets", "bytes")


def _err(msg: str):
    print(f"tc-daemon: error: {msg}", file=sys.stderr)


def expand(paths):
    """Files as given; folders -> the capture files inside (sorted, recursive; other files ignored)."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            for dirpath, _, names in sorted(os.walk(p)):
                for n in sorted(names):
                    f = os.path.join(dirpath, n)
                    try:
                        sniff_format(f)
                    except (CaptureError, OSError):
                        continue
                    out.append(f)
        else:
            out.append(p)
    return out


def _addr(b: bytes) -> str:
    return str(ipaddress.ip_address(b))


def _proto(p: int):
    return PROTO_NAMES.get(p, p)


def flow_row(file, f, names):
    ports = f.proto in PORT_PROTOS
    return dict(file=file, proto=_proto(f.proto), src=_addr(f.src), sport=f.sport if ports else None,
                dst=_addr(f.dst), dport=f.dport if ports else None, packets=f.packets, bytes=f.bytes,
                **{"class": names[f.label]}, confidence=round(f.confidence, 4))


class _Writer:
    def __init__(self, fmt, fields, out=sys.stdout):
        self.fmt, self.fields, self.out = fmt, fields, out
        self.rows = []
        if fmt == "csv":
            self.csv = csv.DictWriter(out, fields, lineterminator="\n")
            self.csv.writeheader()

    def write(self, row):
        if self.fmt == "jsonl":
            self.out.write(json.dumps(row) + "\n")
        elif self.fmt == "csv":
            self.csv.writerow({k: ("" if v is None else v) for k, v in row.items()})
        else:
            self.rows.append(row)  # a table needs every width first

    def close(self):
        if self.fmt != "table" or not self.rows:
            return
        cells = [[("-" if r[k] is None else str(r[k])) for k in self.fields] for r in self.rows]
        widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(self.fields)]
        self.out.write("  ".join(k.ljust(w) for k, w in zip(self.fields, widths)).rstrip() + "\n")
        for c in cells:
            self.out.write("  ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip() + "\n")


def main(a) -> int:
    from . import config as cfgmod
    from . import model as modelmod
    from .classifier import ModelError
    from .cli import CliError
    from .pipeline import Pipeline

    cfg = cfgmod.load(a.config)  # a ConfigError is a CliError: one line, exit 78
    if a.mode:
        cfg.pipeline.mode = a.mode
    try:
        model = modelmod.from_config(cfg, a.model, a.memory_budget, a.threshold)
    except (ModelError, ValueError) as e:
        raise CliError(str(e))
    files = expand(a.captures) if a.captures else expand([SAMPLE_DIR])
    if not files:
        raise CliError("no capture files given or found")

    fields = {"flows": FLOW_FIELDS, "packets": PACKET_FIELDS, "summary": SUMMARY_FIELDS}[a.output]
    out = _Writer(a.format, fields)
    flows, packets = [], []
    pipe = Pipeline(source=[], model=model, config=cfg, threaded=False, on_flow=flows.append,
                    record=(lambda *r: packets.append(r)) if a.output == "packets" else None)
    names = pipe.class_names
    rc = 0
    for path in files:
        flows.clear()
        packets.clear()
        try:
            pipe.run_file(path)
        except CaptureError as e:
            _err(str(e))
            rc = 1
            continue
        except Exception as e:  # noqa: BLE001 - one line per capture, never a traceback
            _err(f"{path}: {type(e).__name__}: {e}")
            rc = 1
            continue
        for reason, n in sorted(pipe.reader_errors.items()):
            print(f"tc-daemon: warning: {path}: {reason} ({n}); classified the frames before it", file=sys.stderr)
        name = path if a.captures else os.path.basename(path)
        flows.sort(key=lambda f: f.id)
        if a.output == "flows":
            for f in flows:
                out.write(flow_row(name, f, names))
        if a.output == "packets":
            for index, f, d, nbytes, ref in packets:
                if ref is None:                # flow mode: the flow's decision
                    c, conf = f.label, f.confidence
                elif isinstance(ref, tuple):   # packet mode, counted at once
                    c, conf = ref
                else:                          # packet mode, through (or after) a scored packet
                    c, conf = ref.cls, ref.conf
                ports = f.proto in PORT_PROTOS
                src, sport, dst, dport = (f.src, f.sport, f.dst, f.dport) if d == 0 else \
                    (f.dst, f.dport, f.src, f.sport)
                out.write(dict(file=name, index=index, proto=_proto(f.proto), src=_addr(src),
                               sport=sport if ports else None, dst=_addr(dst), dport=dport if ports else None,
                               length=nbytes, **{"class": names[c]}, confidence=round(conf, 4)))
    if a.output == "summary":  # the pipeline's own counts: what /metrics counts, in either mode
        rows = [(c, t[4], t[0] + t[1], t[2] + t[3]) for c, t in pipe.tally.items() if t[4] or t[0] or t[1]]
        for c, fl, pk, by in sorted(rows, key=lambda r: -r[2]):
            out.write({"class": c, "flows": fl, "packets": pk, "bytes": by})
    out.close()
    sys.stdout.flush()
    return rc
