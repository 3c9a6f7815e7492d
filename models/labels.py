"""Flow labels from nDPI: through nfstream, or from nDPI's expected `*.out` files.

nDPI labels the training data only; the daemon never runs it. Both sources
give, per flow, the bidirectional flow key (daemon.flows.flow_key), nDPI's
name (MASTER.APP), its confidence, and the time it was first seen.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import yaml

from daemon.flows import flow_key

HERE = os.path.dirname(__file__)
DEFAULT_MAP = os.path.join(HERE, "labels.yaml")
OTHER = "other"

# nDPI's ndpi_confidence_t, as nfstream reports it
CONFIDENCE = {0: "unknown", 1: "port", 2: "nbpf", 3: "dpi_partial", 4: "dpi_partial_cache",
              5: "dpi_cache", 6: "dpi", 7: "ip", 8: "dpi_aggressive", 9: "custom_rule"}
GUESSED = {"unknown", "port", "ip"}
_OUT_CONF = {"DPI": "dpi", "DPI (cache)": "dpi_cache", "DPI (partial)": "dpi_partial",
             "DPI (partial cache)": "dpi_partial_cache", "DPI (aggressive)": "dpi_aggressive",
             "Match by port": "port", "Match by IP": "ip", "Match by custom rule": "custom_rule",
             "nBPF": "nbpf", "Unknown": "unknown"}
_PROTO_NUM = {"TCP": 6, "UDP": 17, "ICMP": 1, "ICMPV6": 58, "IGMP": 2, "SCTP": 132, "ESP": 50,
              "AH": 51, "GRE": 47, "OSPF": 89, "PIM": 103, "VRRP": 112, "PGM": 113}


@dataclass
class FlowLabel:
    name: str          # nDPI's full name, e.g. "TLS.YouTube"
    confidence: str    # one of CONFIDENCE's values
    first_ms: float = 0.0


@dataclass
class LabelMap:
    master_wins: set
    aliases: Dict[str, str]
    generic: set
    class_rule: dict
    capture_groups: Dict[str, List[str]]
    paper_classes: List[str]
    classes: Optional[List[str]] = field(default=None)

    @classmethod
    def load(cls, path: str = DEFAULT_MAP) -> "LabelMap":
        with open(path) as f:
            d = yaml.safe_load(f) or {}
        return cls(set(d.get("master_wins", [])), dict(d.get("aliases", {})), set(d.get("generic", [])),
                   dict(d.get("class_rule", {})), dict(d.get("capture_groups", {})),
                   list(d.get("paper_classes", [])))

    def application(self, name: str) -> str:
        """nDPI name -> application (before the class set is applied)."""
        parts = name.split(".")
        master, app = parts[0], parts[-1]
        if master in self.master_wins:
            app = master
        app = self.aliases.get(app, app)
        if app in self.generic:
            return OTHER
        return app


def _endpoint(s: str):
    """'1.2.3.4:80' or '[fe80::1]:80' -> (packed address, port)."""
    if s.startswith("["):
        addr, _, port = s[1:].partition("]:")
    else:
        addr, _, port = s.rpartition(":")
    return ipaddress.ip_address(addr).packed, int(port or 0)


_FLOW_LINE = re.compile(r"^\s+\d+\s+(\S+)\s+(\S+)\s+(?:<->|->)\s+(\S+)\s+\[proto: [\d.]+/([^\]]+)\]")
_CONF = re.compile(r"\[Confidence: ([^\]]+)\]")


def from_out_file(path: str) -> Dict[bytes, List[FlowLabel]]:
    """Parse nDPI's expected-results file: flow key -> labels (in file order)."""
    labels: Dict[bytes, List[FlowLabel]] = {}
    with open(path, errors="replace") as f:
        for line in f:
            m = _FLOW_LINE.match(line)
            if not m:
                continue
            proto_s, a, b, name = m.groups()
            proto = _PROTO_NUM.get(proto_s, int(proto_s) if proto_s.isdigit() else -1)
            try:
                (sa, sp), (da, dp) = _endpoint(a), _endpoint(b)
            except ValueError:
                continue
            c = _CONF.search(line)
            conf = _OUT_CONF.get(c.group(1), "unknown") if c else "unknown"
            key, _ = flow_key(proto, sa, sp, da, dp)
            labels.setdefault(key, []).append(FlowLabel(name, conf))
    return labels


def from_nfstream(path: str) -> Dict[bytes, List[FlowLabel]]:
    """Run nDPI (bundled in nfstream) over a capture: flow key -> labels by first-seen time."""
    from nfstream import NFStreamer  # training-side dependency ([train] extra)

    labels: Dict[bytes, List[FlowLabel]] = {}
    streamer = NFStreamer(source=path, n_dissections=255, statistical_analysis=False,
                          decode_tunnels=True, n_meters=1, idle_timeout=120, active_timeout=1800)
    for fl in streamer:
        try:
            sa, da = ipaddress.ip_address(fl.src_ip).packed, ipaddress.ip_address(fl.dst_ip).packed
        except ValueError:
            continue
        key, _ = flow_key(fl.protocol, sa, fl.src_port, da, fl.dst_port)
        conf = CONFIDENCE.get(int(fl.application_confidence), "unknown")
        labels.setdefault(key, []).append(FlowLabel(fl.application_name or "Unknown", conf,
                                                    float(fl.bidirectional_first_seen_ms)))
    for v in labels.values():
        v.sort(key=lambda l: l.first_ms)
    return labels


def pick(labels: List[FlowLabel], nth: int) -> FlowLabel:
    """The label of the nth flow we saw with this key (nDPI may split a key into several flows)."""
    return labels[min(nth, len(labels) - 1)]
