"""Reading the daemon's /metrics: a Prometheus text page as {'name{labels}': value}.

Shared by the benchmarks (bench/live.py, bench/soak.py) and the tests that run
the daemon as a process (tests/daemon_proc.py). Standard library only.
"""
from __future__ import annotations

import http.client
import re
import socket
import urllib.request

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url: str, timeout: float = 5.0) -> dict:
    """{'name{labels}': value} from a Prometheus text page. ConnectionError (an OSError, which wait
    loops retry) when what answered is not HTTP: while nothing listens yet on a port from the ephemeral
    range, a connection to it can meet itself, and the request comes back as the status line."""
    try:
        text = urllib.request.urlopen(url, timeout=timeout).read().decode()
    except http.client.HTTPException as e:
        raise ConnectionError(f"{url}: no HTTP answer ({type(e).__name__}: {e})") from None
    vals = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = _SAMPLE.match(line)
        if m:
            vals[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return vals


def total(vals: dict, name: str) -> float:
    """The sum of a metric over all its label sets."""
    return sum(v for k, v in vals.items() if k == name or k.startswith(name + "{"))


def by_label(vals: dict, name: str, label: str) -> dict:
    """{label value: sum} of a metric, summed over its other labels."""
    out = {}
    for k, v in vals.items():
        if k.startswith(name + "{"):
            m = re.search(label + r'="([^"]*)"', k)
            if m:
                out[m.group(1)] = out.get(m.group(1), 0) + v
    return out


def quantile(before: dict, after: dict, name: str, q: float):
    """A quantile (a bucket's upper bound) from a histogram's bucket deltas between two scrapes."""
    b = {float(m.group(1)): after[k] - before.get(k, 0)
         for k in after if k.startswith(name + "_bucket") and (m := re.search(r'le="([^"]+)"', k))}
    if not b:
        return None
    les = sorted(b)
    n = b[les[-1]]
    if n <= 0:
        return None
    for le in les:
        if b[le] >= q * n:
            return le
    return les[-1]
