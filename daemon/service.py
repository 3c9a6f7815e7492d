"""`tc-daemon run`: the daemon under systemd (Type=notify).

Start: config (exit 78 if bad) -> model (exit 1 if missing or corrupt) ->
capture sources -> /metrics (exit 1 if the port is taken) -> threads ->
READY=1. The main thread then only waits: it ends idle flows, sends
WATCHDOG=1 at half of WATCHDOG_USEC while the classifier thread is alive,
STATUS= with live counts, and handles signals: SIGHUP reloads config and model
(a broken new one leaves the old running and says why; last_reload_success
0), SIGTERM/SIGINT drain the queue, count every flow and exit 0.
Logs are one line each on stderr, which the journal takes; never packet bytes.
"""
from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from . import config as cfgmod
from . import metrics as M
from . import model as modelmod
from .classifier import ModelError
from .cli import CliError

log = logging.getLogger("tc-daemon")
STATUS_EVERY = 5.0  # s between STATUS= updates
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


# --- sd_notify ----------------------------------------------------------------------

class Notifier:
    """sd_notify: systemd-python's when installed, else a datagram to $NOTIFY_SOCKET ('@' = abstract)."""

    def __init__(self, env=os.environ):
        self.address = env.get("NOTIFY_SOCKET") or None
        self._sd = None
        self._sock = None
        if not self.address:
            return
        try:
            from systemd import daemon as sd_daemon  # systemd-python, optional
            self._sd = sd_daemon
        except ImportError:
            addr = self.address
            self._addr = "\0" + addr[1:] if addr.startswith("@") else addr
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def __bool__(self):
        return self.address is not None

    def notify(self, state: str) -> bool:
        if not self.address:
            return False
        if self._sd is not None:
            return bool(self._sd.notify(state))
        try:
            self._sock.sendto(state.encode(), self._addr)
            return True
        except OSError:
            return False


def watchdog_interval(env=os.environ):
    """Seconds between WATCHDOG=1 (half of WATCHDOG_USEC), or None when systemd wants none from us."""
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        return max(int(usec) / 2e6, 0.01)
    except ValueError:
        return None


# --- logging --------------------------------------------------------------------------

class _JournalFormatter(logging.Formatter):
    """`<N>message`: journald reads the priority from the prefix and adds the time itself."""

    def format(self, record):
        return f"<{_PRIORITY.get(record.levelno, 6)}>{record.getMessage()}"


def setup_logging(level: str):
    h = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        h.setFormatter(_JournalFormatter())
    else:
        h.setFormatter(logging.Formatter("%(asctime)s tc-daemon %(levelname)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    log.handlers[:] = [h]
    log.propagate = False
    log.setLevel(level.upper())


# --- config and sources -----------------------------------------------------------------

def load_config(a) -> cfgmod.Config:
    """The config file with command-line overrides; ConfigError (exit 78) if unusable."""
    cfg = cfgmod.load(a.config)
    if a.interface:
        cfg.capture.interfaces = list(a.interface)
        if cfg.capture.backend == "pcap":
            cfg.capture.backend = "afpacket"
    if a.pcap:
        cfg.capture.backend, cfg.capture.pcap = "pcap", a.pcap
    if a.listen:
        cfg.metrics.listen = cfgmod.from_dict({"metrics": {"listen": a.listen}}, "--listen").metrics.listen
    if a.memory_budget is not None:
        cfg.model.memory_budget = cfgmod.from_dict({"model": {"memory_budget": a.memory_budget}},
                                                   "--memory-budget").model.memory_budget
    if a.model:
        cfg.model.name = a.model
    if cfg.capture.backend != "pcap" and not cfg.capture.interfaces:
        raise cfgmod.ConfigError(f"{a.config or 'config'}: capture.interfaces: no interface to capture on "
                                 "(set it, or use --interface or --pcap)")
    return cfg


def make_sources(cfg):
    """Capture sources for the config; afpacket sockets are opened here so a missing
    CAP_NET_RAW is an error now, not a silent retry loop."""
    c = cfg.capture
    if c.backend == "pcap":
        from .capture.pcapfile import CaptureError
        from .capture.replay import ReplaySource
        try:
            src = ReplaySource(c.pcap, c.replay_speed)
        except CaptureError as e:
            raise CliError(str(e))
        M.init_interface(src.name)
        return [src]
    sources = []
    for name in c.interfaces:
        M.init_interface(name)
        if c.backend == "pyshark":
            from .capture.pyshark import PysharkSource
            try:
                sources.append(PysharkSource(name, c.bpf_filter))
            except ImportError as e:
                raise CliError(str(e))
            except ValueError as e:
                raise CliError(str(e), cfgmod.EX_CONFIG)
            continue
        from .capture import afpacket
        try:
            program = afpacket.compile_bpf(c.bpf_filter, afpacket.linktype_of(name))
        except afpacket.BpfError as e:
            raise CliError(str(e), cfgmod.EX_CONFIG)
        src = afpacket.AfPacketSource(name, c.promiscuous, c.ignore_outgoing, c.rcvbuf_bytes, program,
                                      c.fanout_group, ring=c.ring)
        try:
            src.open()
        except PermissionError:
            raise CliError(f"capture on {name}: operation not permitted (needs CAP_NET_RAW"
                           f"{', and CAP_NET_ADMIN for promiscuous mode' if c.promiscuous else ''})")
        except OSError as e:
            if e.errno == 22 and c.fanout_group is not None:  # EINVAL: the group exists with other settings
                raise CliError(f"capture on {name}: cannot join fanout group {c.fanout_group}: {e.strerror}")
            log.warning("capture on %s not open yet (%s); retrying until it is", name, e.strerror or e)
        sources.append(src)
    return sources


class _GcSchedule:
    """The cyclic garbage collector on a schedule instead of on allocation counts. Left to itself it
    scans every live flow (tens of thousands of objects, none in a cycle) each time the table has
    grown by a quarter, holding the capture thread 15-20 ms each time, which at 50k packets/s
    showed as a p99 latency of 25-75 ms (docs/performance.md). Here: the objects of startup are
    frozen (never scanned again), the young generations (only objects made since the last tick) are
    collected from the main loop, and a full collection runs every FULL_EVERY seconds."""
    FULL_EVERY = 600.0

    def __init__(self):
        gc.collect()
        gc.freeze()
        gc.disable()
        self.next_full = time.monotonic() + self.FULL_EVERY

    def step(self, now):
        if now >= self.next_full:
            self.next_full = now + self.FULL_EVERY
            gc.collect()
        else:
            gc.collect(1)


def tune_malloc(arenas: int = 2) -> bool:
    """glibc's heap settings for a process whose flow table turns over for months. By default glibc
    raises its mmap threshold to the size of each big block freed, so the flow table's hash table,
    reallocated as flows come and go, ends up on the heap, whose freed holes are not given back:
    RSS grew 11.5 MiB from the table's filling to 600,000 flows seen (`python -m bench.heapchurn --plain`).
    A fixed threshold keeps big blocks in mmap, returned when freed. Fewer arenas: each thread that
    allocates would otherwise get its own, with holes of its own. False where there is no glibc
    (musl on OpenWrt: its allocator has neither setting)."""
    import ctypes
    import platform
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8
    return bool(mallopt(M_MMAP_THRESHOLD, 128 * 1024)) and bool(mallopt(M_ARENA_MAX, arenas))


# --- workers (capture.workers > 1) -----------------------------------------------------

def _spawn_workers(a, cfg):
    """Workers 1..n-1 as child processes sharing the interfaces through PACKET_FANOUT; each serves its
    own /metrics on the listen port + its index. Only the parent talks to systemd."""
    children = []
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    for i in range(1, cfg.capture.workers):
        argv = [sys.executable, "-m", "daemon.cli"] + [x for x in sys.argv[1:]]
        children.append(subprocess.Popen(argv, env=dict(env, TC_DAEMON_WORKER=str(i),
                                                        TC_DAEMON_PARENT=str(os.getpid()))))
    return children


# --- the daemon ---------------------------------------------------------------------------

class _Signals:
    def __init__(self):
        self.stop = threading.Event()
        self.reload = threading.Event()
        self.wake = threading.Event()
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    def _on_stop(self, *_):
        self.stop.set()
        self.wake.set()

    def _on_reload(self, *_):
        self.reload.set()
        self.wake.set()


def _describe(model) -> str:
    e = model.entry
    return f"{e['name']} ({e.get('family', '?')}, {e.get('params', '?')} parameters, {len(e['classes'])} classes, " \
           f"reject threshold {model.threshold:.3f})"


def _status(pipeline) -> str:
    counted = sum(t[0] + t[1] for t in pipeline.tally.values())
    flows = sum(t[4] for t in pipeline.tally.values())
    return (f"STATUS={pipeline.model.name}: {sum(pipeline.captured.values())} frames captured, {counted} packets "
            f"classified, {flows} flows decided, {len(pipeline.table)} in table, {pipeline.dropped} dropped")


def reload(a, pipeline, old_cfg):
    """SIGHUP: new config and model, or keep the old ones and say why. Returns the config in use."""
    M.LAST_RELOAD.set(time.time())
    try:
        cfg = load_config(a)
        model = modelmod.from_config(cfg, None, None)
    except (cfgmod.ConfigError, ModelError, ValueError) as e:
        M.LAST_RELOAD_OK.set(0)
        log.error("reload failed; still running the previous config and model: %s", e)
        return old_cfg
    if cfg.capture != old_cfg.capture or cfg.metrics != old_cfg.metrics:
        log.warning("reload: capture and metrics settings take effect at the next restart")
    pipeline.set_model(model, cfg.pipeline)
    log.setLevel(cfg.logging.level.upper())
    M.LAST_RELOAD_OK.set(1)
    log.info("reloaded: model %s", _describe(model))
    return cfg


def main(a) -> int:
    cfg = load_config(a)  # a ConfigError is a CliError: one line, exit 78
    if a.check_config:
        print(f"{a.config or 'built-in defaults'}: ok")
        return 0
    tune_malloc()  # before the threads that allocate exist
    setup_logging(cfg.logging.level)
    worker = int(os.environ.get("TC_DAEMON_WORKER", "0"))
    parent = int(os.environ.get("TC_DAEMON_PARENT", "0"))
    try:
        model = modelmod.from_config(cfg)
    except (ModelError, ValueError) as e:
        raise CliError(str(e))
    sources = make_sources(cfg)

    from .pipeline import Pipeline
    pipeline = Pipeline(source=sources, model=model, config=cfg)
    host, port = cfgmod.listen_address(cfg.metrics.listen)
    port += worker
    tls, auth = cfg.metrics.tls, cfg.metrics.basic_auth
    try:
        server = M.serve(host, port, tls.cert_file, tls.key_file, auth.username, auth.password_sha256)
    except OSError as e:
        raise CliError(f"metrics: cannot listen on {host}:{port}: {e.strerror or e}")
    M.LAST_RELOAD.set(time.time())
    M.LAST_RELOAD_OK.set(1)

    sig = _Signals()
    fanout = cfg.capture.workers > 1 and cfg.capture.backend == "afpacket"  # a replay is not shared
    children = _spawn_workers(a, cfg) if fanout and worker == 0 else []
    pipeline.start()
    notifier = Notifier() if worker == 0 else Notifier({})
    scheme = "https" if tls.cert_file else "http"
    log.info("running%s: model %s; capturing on %s; metrics on %s://%s:%d/metrics",
             f" (worker {worker})" if worker else "", _describe(model), ", ".join(s.name for s in sources),
             scheme, host, port)
    notifier.notify("READY=1\n" + _status(pipeline))

    gc_young = _GcSchedule()
    wd = watchdog_interval() if notifier else None
    wd_age = max(wd * 2, 1.5) if wd else None  # the idle classifier loop beats every 0.5 s
    next_wd = next_status = time.monotonic()
    rc = 0
    while not sig.stop.is_set():
        now = time.monotonic()
        timeout = min(0.5, max(0.0, next_wd - now)) if wd else 0.5
        sig.wake.wait(timeout)
        sig.wake.clear()
        if sig.reload.is_set():
            sig.reload.clear()
            notifier.notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
            cfg = reload(a, pipeline, cfg)
            for ch in children:
                ch.send_signal(signal.SIGHUP)
            notifier.notify("READY=1\n" + _status(pipeline))
        pipeline.tick()
        now = time.monotonic()
        gc_young.step(now)
        if wd and now >= next_wd:
            next_wd = now + wd
            if pipeline.alive(wd_age):  # a stuck classifier stops the pings and systemd restarts us
                notifier.notify("WATCHDOG=1")
        if now >= next_status:
            next_status = now + STATUS_EVERY
            notifier.notify(_status(pipeline))
        if worker and os.getppid() != parent:  # the parent died without telling us: do not linger
            log.error("worker %d: parent process gone; exiting", worker)
            break
        if pipeline.capture_failed:
            log.error("a capture thread failed; exiting so that the service manager restarts the daemon")
            rc = 1
            break
    notifier.notify("STOPPING=1")
    for ch in children:
        ch.terminate()
    pipeline.stop()
    for ch in children:
        try:
            ch.wait(10)
        except subprocess.TimeoutExpired:
            ch.kill()
    server.shutdown()
    log.info("stopped: %s", _status(pipeline)[len("STATUS="):])
    return rc
