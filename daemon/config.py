"""The YAML config: every key with its default, its type and what it does.

The schema is the dataclasses below; each field's metadata holds its kind
(how it is validated) and its documentation, which is also what
`example_yaml()` writes into deploy/config.example.yaml. A bad config is a
ConfigError of one line naming the key and the expected type; the daemon
exits 78 (EX_CONFIG) on it, which the systemd unit does not restart.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, List, Optional

import yaml

from .errors import EX_CONFIG, ConfigError  # noqa: F401 (ConfigError is part of this module's interface)
from .registry import parse_size


def opt(default, kind: str, doc: str, **check):
    """A config key: default, kind ('int', 'float', 'bool', 'str', 'size', 'list', 'bpf',
    'listen', 'enum'), one-paragraph doc, and checks (min, max, choices, null)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=dict(kind=kind, doc=doc, **check))
    return field(default=default, metadata=dict(kind=kind, doc=doc, **check))


def section(cls, doc: str):
    return field(default_factory=cls, metadata=dict(kind="section", doc=doc))


@dataclass
class Capture:
    interfaces: List[str] = opt([], "list", "Interfaces to capture on (AF_PACKET), e.g. [br-lan] on OpenWrt or "
                                "[eth0]. Flows seen on several interfaces share one flow table.")
    backend: str = opt("afpacket", "enum", "afpacket: a raw socket per interface (default, standard library); "
                       "pcap: replay the capture file `capture.pcap` through the live pipeline; pyshark: "
                       "tshark through pyshark (optional extra; slow: tshark parses every packet, under "
                       "1000 packets/s, memory grows, a malformed packet can end the capture).",
                       choices=("afpacket", "pcap", "pyshark"))
    pcap: Optional[str] = opt(None, "str", "Capture file (pcap or pcapng) replayed by the pcap backend.", null=True)
    replay_speed: float = opt(1.0, "float", "pcap backend: 1 = the capture's own pace, 2 = twice as fast, "
                              "0 = as fast as possible (expect queue_full drops when the model cannot keep up).",
                              min=0)
    bpf_filter: Any = opt(None, "bpf", "Kernel filter (classic BPF, SO_ATTACH_FILTER) so unwanted frames never "
                          "reach the daemon: either a list of [code, jt, jf, k] instructions as printed by "
                          "`tcpdump -ddd -i IFACE EXPR` (one instruction per line after the count), or a "
                          "tcpdump expression string, compiled at start by running `tcpdump -ddd` (tcpdump "
                          "must then be installed). null = every frame.", null=True)
    promiscuous: bool = opt(False, "bool", "Put the interfaces in promiscuous mode (PACKET_ADD_MEMBERSHIP; the "
                            "packet socket's CAP_NET_RAW is enough). Not needed on a router, which sees its forwarded traffic anyway.")
    ignore_outgoing: bool = opt(False, "bool", "Skip frames this host sends (PACKET_IGNORE_OUTGOING). Keep false on a "
                                "router: traffic it forwards to clients leaves through the LAN interface.")
    rcvbuf_bytes: int = opt(4 << 20, "size", "Buffer absorbing bursts while the daemon is busy, e.g. 4MiB: the "
                            "TPACKET_V3 ring's size (64 KiB blocks) when `ring` is on, else the socket buffer, set "
                            "with SO_RCVBUFFORCE when permitted (CAP_NET_ADMIN), else capped by net.core.rmem_max.",
                            min=65536)
    ring: str = opt("auto", "enum", "Read frames from a shared TPACKET_V3 ring (PACKET_RX_RING + mmap: no system "
                    "call per frame; latency counted from the kernel's arrival time) instead of one recv per "
                    "frame. auto = on x86, off elsewhere (Python cannot order the ring's reads on ARM).",
                    choices=("auto", "on", "off"))
    fanout_group: Optional[int] = opt(None, "int", "PACKET_FANOUT group id (hash mode: both directions of a flow "
                                      "go to the same member). Several `tc-daemon run` instances with the same "
                                      "group share an interface's traffic. null = no fanout.",
                                      null=True, min=0, max=65535)
    workers: int = opt(1, "int", "Capture+classify processes sharing each interface through `fanout_group`; "
                       "worker i (from 0) serves its metrics on the listen port + i. Needs fanout_group when > 1.",
                       min=1, max=64)


@dataclass
class Model:
    name: Optional[str] = opt(None, "str", "Model name from the shipped manifest (`tc-daemon models list`) or a "
                              ".tflite path; null = the most accurate model within memory_budget.", null=True)
    memory_budget: Optional[int] = opt(16 << 20, "size", "Largest model to load, as run-time memory (the "
                                       "manifest's measured peak), e.g. 2MiB or 500k. The default keeps to what a "
                                       "small gateway can spare and leaves out the slow, large LSTMs; null = no "
                                       "limit.", null=True, min=1)
    min_pps: Optional[float] = opt(None, "float", "Only models measured at this many packets/s or more at batch 1.",
                                   null=True, min=0)
    threads: int = opt(1, "int", "TFLite interpreter threads. 1 leaves the other core to capture.", min=1, max=64)
    reject_threshold: Optional[float] = opt(None, "float", "Confidence under which a flow (or packet) is counted "
                                            "as 'other'; null = the model's calibrated value from the manifest.",
                                            null=True, min=0, max=1)


@dataclass
class Pipeline:
    mode: str = opt("flow", "enum", "flow: the first flow_packets payload packets of a flow decide its class and "
                    "its later packets are counted without the model; packet: every payload packet goes through "
                    "the model (as in the paper), bare packets count under their flow's latest packet class.",
                    choices=("flow", "packet"))
    flow_packets: int = opt(3, "int", "Flow mode: payload packets per flow the model sees before deciding (k).",
                            min=1, max=1000)
    batch_size: int = opt(64, "int", "Micro-batching: the model runs on up to this many packets at once, or on what "
                          "has waited batch_timeout_ms, whichever comes first.", min=1,
                          max=1024)
    batch_timeout_ms: float = opt(5.0, "float", "Longest wait (milliseconds) of a packet for its batch to fill.",
                                  min=0)
    queue_packets: int = opt(4096, "int", "Packets waiting for the model at most; beyond, packets skip the model "
                             "(counted as dropped, reason queue_full) and capture never waits.", min=1)
    block_frames: int = opt(128, "int", "Flow mode over the capture ring: a ring block of at least this many frames "
                            "is decoded at once by numpy and counted per flow; smaller ones frame by frame, which "
                            "is cheaper there (numpy costs per call: `python -m bench.blocks`). 0: never.", min=0)
    max_flows: int = opt(65536, "int", "Flow table size; the least recently seen flow is evicted beyond it.",
                         min=1)
    idle_timeout: float = opt(120.0, "float", "Seconds without a packet that end a flow.", min=0)
    active_timeout: float = opt(1800.0, "float", "Seconds after its first packet that end a flow.", min=0)


@dataclass
class TLS:
    cert_file: Optional[str] = opt(None, "str", "PEM certificate: serve /metrics over HTTPS.", null=True)
    key_file: Optional[str] = opt(None, "str", "PEM private key of cert_file.", null=True)


@dataclass
class BasicAuth:
    username: Optional[str] = opt(None, "str", "HTTP basic auth user for /metrics; null = no auth.", null=True)
    password_sha256: Optional[str] = opt(None, "str", "Hex SHA-256 of the password (`printf %s PASS | sha256sum`), "
                                         "so the config holds no password.", null=True)


@dataclass
class Metrics:
    listen: str = opt("127.0.0.1:9105", "listen", "host:port of the Prometheus endpoint (/metrics). Localhost by "
                      "default; [::]:9105 for all IPv6+IPv4 addresses.")
    tls: TLS = section(TLS, "TLS for /metrics (prometheus_client's certfile/keyfile).")
    basic_auth: BasicAuth = section(BasicAuth, "HTTP basic auth for /metrics (use it with TLS).")


@dataclass
class Logging:
    level: str = opt("info", "enum", "debug, info, warning or error. Logs go to stderr (the journal), one line "
                     "each, never packet bytes or addresses.", choices=("debug", "info", "warning", "error"))


@dataclass
class Config:
    capture: Capture = section(Capture, "Where packets come from.")
    model: Model = section(Model, "Which model classifies them.")
    pipeline: Pipeline = section(Pipeline, "How packets reach the model and decisions are made.")
    metrics: Metrics = section(Metrics, "The Prometheus endpoint.")
    logging: Logging = section(Logging, "Log output.")


# --- validation ---------------------------------------------------------------

_KIND_NAMES = dict(int="an integer", float="a number", bool="true or false", str="a string",
                   size="a size (bytes, or e.g. 2MiB, 500k)", list="a list of strings",
                   bpf="a tcpdump expression or a list of [code, jt, jf, k]", listen="host:port")
_LISTEN = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[^\s:\[\]]*):(\d{1,5})$")


def _expected(meta) -> str:
    kind = meta["kind"]
    s = "one of " + ", ".join(meta["choices"]) if kind == "enum" else _KIND_NAMES[kind]
    if "min" in meta and "max" in meta:
        s += f" in {meta['min']}..{meta['max']}"
    elif "min" in meta:
        s += f" >= {meta['min']}"
    if meta.get("null"):
        s += " or null"
    return s


def _check(value, meta):
    """The validated value, or raise ValueError (the caller names the key)."""
    kind = meta["kind"]
    if value is None:
        if meta.get("null"):
            return None
        raise ValueError
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError
        value = float(value)
    elif kind == "bool":
        if not isinstance(value, bool):
            raise ValueError
    elif kind == "str":
        if not isinstance(value, str) or not value:
            raise ValueError
    elif kind == "enum":
        if isinstance(value, bool) and "on" in meta["choices"]:  # YAML 1.1 reads a bare on/off as a bool
            value = "on" if value else "off"
        if value not in meta["choices"]:
            raise ValueError
    elif kind == "size":
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError
        value = parse_size(value)  # ValueError on nonsense
    elif kind == "list":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ValueError
    elif kind == "bpf":
        if isinstance(value, str):
            if not value.strip():
                raise ValueError
        elif isinstance(value, list) and value and all(
                isinstance(i, list) and len(i) == 4 and all(isinstance(x, int) and not isinstance(x, bool)
                                                            and x >= 0 for x in i) for i in value):
            value = [tuple(i) for i in value]
        else:
            raise ValueError
    elif kind == "listen":
        if not isinstance(value, str):
            raise ValueError
        m = _LISTEN.match(value)
        if not m or not 0 < int(m.group(2)) < 65536:
            raise ValueError
    if kind in ("int", "float", "size"):
        if "min" in meta and value < meta["min"] or "max" in meta and value > meta["max"]:
            raise ValueError
    return value


def _build(cls, data, prefix: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of keys, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        if k not in fields:
            where = f"{prefix}.{k}" if prefix else str(k)
            raise ConfigError(f"{where}: unknown key (known here: {', '.join(fields)})")
    kw = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if f.metadata["kind"] == "section":
            kw[name] = _build(f.default_factory, data.get(name), key)
        elif name in data:
            try:
                kw[name] = _check(data[name], f.metadata)
            except ValueError:
                raise ConfigError(f"{key}: expected {_expected(f.metadata)}, got {data[name]!r}") from None
    return cls(**kw)


def _cross_checks(c: Config):
    if bool(c.metrics.tls.cert_file) != bool(c.metrics.tls.key_file):
        raise ConfigError("metrics.tls: cert_file and key_file go together")
    if bool(c.metrics.basic_auth.username) != bool(c.metrics.basic_auth.password_sha256):
        raise ConfigError("metrics.basic_auth: username and password_sha256 go together")
    pw = c.metrics.basic_auth.password_sha256
    if pw and not re.fullmatch(r"[0-9a-fA-F]{64}", pw):
        raise ConfigError("metrics.basic_auth.password_sha256: expected 64 hex digits (sha256sum output)")
    if c.capture.workers > 1 and c.capture.fanout_group is None:
        raise ConfigError("capture.workers: more than 1 worker needs capture.fanout_group")
    if c.capture.backend == "pcap" and not c.capture.pcap:
        raise ConfigError("capture.pcap: the pcap backend needs a capture file")


def from_dict(data, source: str = "config") -> Config:
    try:
        c = _build(Config, data, "")
        _cross_checks(c)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return c


def load(path: Optional[str] = None) -> Config:
    """Read and validate a YAML config; None gives the defaults. Raises ConfigError (one line)."""
    if path is None:
        return Config()
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    return from_dict(data, path)


def listen_address(listen: str):
    """'127.0.0.1:9105' -> ('127.0.0.1', 9105); '[::1]:9105' -> ('::1', 9105); ':9105' -> ('0.0.0.0', 9105)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def example_yaml() -> str:
    """Every key with its default, documented: the text of deploy/config.example.yaml."""
    lines = ["# tc-daemon configuration: every key, with its default value.",
             "# Validated at start and on reload (SIGHUP): an unknown key or a wrong type is a",
             "# one-line error and exit code 78. Check a file with: tc-daemon run --check-config -c FILE",
             ""]

    def emit(obj, indent):
        for f in dataclasses.fields(obj):
            meta = f.metadata
            pad = "  " * indent
            for para in _wrap(meta["doc"], 88 - len(pad)):
                lines.append(f"{pad}# {para}")
            value = getattr(obj, f.name)
            if meta["kind"] == "section":
                lines.append(f"{pad}{f.name}:")
                emit(value, indent + 1)
            else:
                if meta["kind"] == "size" and isinstance(value, int) and value % (1 << 20) == 0:
                    value = f"{value >> 20}MiB"
                text = yaml.safe_dump({f.name: value}, default_flow_style=True, width=1000).strip()[1:-1]
                lines.append(f"{pad}{text}")
            if indent == 0:
                lines.append("")

    emit(Config(), 0)
    return "\n".join(lines).rstrip() + "\n"


def _wrap(text: str, width: int):
    import textwrap
    return textwrap.wrap(text, width) or [""]
