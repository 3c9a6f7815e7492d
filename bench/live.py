"""The live rate ladder: tcpreplay onto a veth pair, `tc-daemon run` on the other end.

Each step replays real Ethernet captures from the corpus at a fixed packet
rate for at least `seconds`, then reads the daemon's own /metrics: captured,
classified, dropped (by reason, and the kernel's), capture-to-decision
latency quantiles, and the daemon's RSS and CPU. Needs root (netns, veth).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from bench import DEFAULT_CORPUS
from bench.netns import sh, veth_netns
from bench.promtext import by_label, free_port, quantile, scrape, total
from daemon.capture.pcapfile import CaptureError, PcapReader

LADDER = (1_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000)


def ethernet_captures(corpus, limit=40):
    """The corpus's largest Ethernet pcaps (tcpreplay sends frames as they are)."""
    out = []
    for name in sorted(os.listdir(corpus)):
        p = os.path.join(corpus, name)
        try:
            with PcapReader(p) as r:
                recs = [lt for lt, _, _ in r]
        except CaptureError:
            continue
        if recs and all(lt == 1 for lt in recs) and r.format == "pcap":
            out.append((len(recs), p))
    out.sort(reverse=True)
    return [p for _, p in out[:limit]], sum(n for n, _ in out[:limit])


def _children(pid):
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:  # the thread ended meanwhile
            pass
    return out


def proc_stats(pid):
    """(memory bytes, CPU seconds) of the daemon with its child processes (fanout workers): its RSS plus
    each child's own pages (USS: pages a child shares with the daemon, libraries, count once, in the
    daemon's RSS), and the CPU time of all of them."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))
    cpu = 0.0
    for i, p in enumerate([pid] + _children(pid)):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            if i:
                with open(f"/proc/{p}/smaps_rollup") as f:
                    rss += sum(int(l.split()[1]) * 1024 for l in f if l.startswith(("Private_Clean:",
                                                                                       "Private_Dirty:")))
        except OSError:  # a child that ended meanwhile
            pass
    return rss, cpu


def start_daemon(config_text: str, port: int):
    """`tc-daemon run` on a config of that text, once its /metrics answers: (Popen, its temporary directory).
    RuntimeError with the daemon's last line if it exits first."""
    tmp = tempfile.mkdtemp(prefix="tc-bench-")
    cfg = os.path.join(tmp, "config.yaml")
    with open(cfg, "w") as f:
        f.write(config_text)
    exe = shutil.which("tc-daemon") or os.path.join(os.path.dirname(sys.executable), "tc-daemon")
    daemon = subprocess.Popen([exe, "run", "--config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    for _ in range(100):
        try:
            scrape(f"http://127.0.0.1:{port}/metrics")
            return daemon, tmp
        except OSError:
            if daemon.poll() is not None:
                shutil.rmtree(tmp, ignore_errors=True)
                raise RuntimeError("daemon exited: " + (daemon.stderr.read().strip().splitlines() or ["?"])[-1])
            time.sleep(0.2)
    daemon.kill()
    shutil.rmtree(tmp, ignore_errors=True)
    raise RuntimeError("daemon's /metrics did not answer in 20 s")


def ladder(rates=LADDER, seconds=10.0, mode="flow", corpus=DEFAULT_CORPUS, quick=False, config_extra="",
           capture_extra="", pipeline_extra=""):
    """`config_extra`: YAML sections appended to the daemon's config; `capture_extra` and `pipeline_extra`:
    lines of its capture and pipeline sections, e.g. "  ring: off\n", "  block_frames: 0\n"."""
    if os.geteuid() != 0 or not shutil.which("tcpreplay"):
        print("  live: needs root and tcpreplay; skipped", file=sys.stderr)
        return dict(skipped="needs root and tcpreplay")
    if quick:
        rates, seconds = rates[:3], 3.0
    files, n_pkts = ethernet_captures(corpus)
    tag = f"tcb{os.getpid() % 100000}"
    ns, a, b = tag + "ns", tag + "a", tag + "b"
    port = free_port()
    steps = []
    daemon = tmp = None
    # a plain link (kernel-default MTU, IPv6 on), as the ladder has always measured on
    with veth_netns(ns, a, b, mtu=None, ipv6=True):
        try:
            daemon, tmp = start_daemon(f"capture:\n  interfaces: [{a}]\n{capture_extra}pipeline:\n  mode: {mode}\n"
                                       f"{pipeline_extra}metrics:\n  listen: 127.0.0.1:{port}\n" + config_extra, port)
            url = f"http://127.0.0.1:{port}/metrics"
            for rate in rates:
                loops = max(1, int(rate * seconds / n_pkts + 0.999))
                before = scrape(url)
                rss0, cpu0 = proc_stats(daemon.pid)
                t0 = time.time()
                r = sh("ip", "netns", "exec", ns, "tcpreplay", "-q", "-i", b, f"--pps={rate}", f"--loop={loops}",
                       "--unique-ip",  # every loop new addresses, so new flows: the model keeps working
                       "--preload-pcap", *files, check=False)
                time.sleep(1.0)  # let the pipeline drain
                wall = time.time() - t0
                after = scrape(url)
                rss, cpu1 = proc_stats(daemon.pid)
                m = re.search(r"Actual: (\d+) packets", r.stdout)
                sent = int(m.group(1)) if m else None
                d = lambda name: total(after, name) - total(before, name)  # noqa: E731
                drops = {k: v - by_label(before, "tc_daemon_dropped_packets_total", "reason").get(k, 0)
                         for k, v in by_label(after, "tc_daemon_dropped_packets_total", "reason").items()}
                step = dict(rate=rate, seconds=round(wall, 1), sent=sent,
                            captured=d("tc_daemon_captured_packets_total"),
                            classified=d("tc_daemon_packets_total"), dropped={k: v for k, v in drops.items() if v},
                            kernel_drops=d("tc_daemon_kernel_drops_total"),
                            latency_p50_s=quantile(before, after, "tc_daemon_decision_latency_seconds", 0.5),
                            latency_p99_s=quantile(before, after, "tc_daemon_decision_latency_seconds", 0.99),
                            rss_bytes=rss, cpu_percent=100 * (cpu1 - cpu0) / wall)
                step["zero_drops"] = not step["dropped"] and step["kernel_drops"] == 0 and \
                    (sent is None or step["captured"] >= sent)
                steps.append(step)
                print(f"  {rate:>7}/s sent {sent} captured {step['captured']:.0f} classified {step['classified']:.0f} "
                      f"drops {sum(step['dropped'].values()):.0f}+kernel {step['kernel_drops']:.0f} "
                      f"p99 {step['latency_p99_s']} s rss {rss / 2**20:.0f} MiB cpu {step['cpu_percent']:.0f}%",
                      flush=True)
        finally:
            if daemon and daemon.poll() is None:
                daemon.terminate()
                try:
                    daemon.wait(10)
                except subprocess.TimeoutExpired:
                    daemon.kill()
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
    ok = [s["rate"] for s in steps if s["zero_drops"]]
    return dict(mode=mode, captures=len(files), steps=steps, highest_zero_drop_rate=max(ok) if ok else 0)
