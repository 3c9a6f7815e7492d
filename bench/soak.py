"""Soak: `tc-daemon run` for a long time under steady replayed traffic; does it leak or drift?

    python -m bench.soak --minutes 60 --rate 2000 --out docs/soak

Creates its own network namespace and veth pair, starts the daemon on the
root-namespace end, and loops tcpreplay over a few corpus captures into the
other end at --rate packets/s, with --unique-ip so every loop brings new flows
(the flow table must keep turning over, not just hold the same few). Every
--interval seconds it samples, from /proc and the daemon's /metrics: RSS, CPU,
flow-table size, drops (queue, by reason, and the kernel's) and the
counters. At the end it checks that

- the daemon stayed up and answered every scrape;
- every counter (*_total, histogram _count/_sum) only went up;
- the flow table stayed within pipeline.max_flows;
- RSS grew less than --max-growth % from the end of the warm-up (the first
  10 % of the run) to the end (medians of a few samples each side);
- frames on the interface = captured + kernel drops, and, once every flow has
  ended, captured = packets counted under a class + frames skipped (no
  silent loss);

then writes soak.json and soak.png (RSS and drops over time) to --out, prints
a table and a verdict, and removes the namespace. Needs root, iproute2 and
tcpreplay. Ctrl-C (or SIGTERM) ends the run early and still writes what it has.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from bench.live import DEFAULT_CORPUS, ethernet_captures, proc_stats
from bench.netns import make_link, remove, rx_packets, sh
from bench.promtext import by_label, free_port, scrape, total

WARMUP = 0.10  # share of the run before RSS is taken as the baseline
SERIES = re.compile(r"^tc_daemon_\w+(_total|_count|_sum)(\{|$)")


def _median(xs):
    return statistics.median(xs) if xs else None


def sample(url, pid, iface, t0, prev_cpu):
    vals = scrape(url)
    rss, cpu = proc_stats(pid)
    now = time.monotonic()
    drops = by_label(vals, "tc_daemon_dropped_packets_total", "reason")
    s = dict(t=round(now - t0, 2), rss_bytes=rss, cpu_seconds=round(cpu, 3),
             cpu_percent=round(100 * (cpu - prev_cpu[1]) / max(now - prev_cpu[0], 1e-6), 1),
             flow_table=vals.get("tc_daemon_flow_table_entries", 0),
             captured=vals.get(f'tc_daemon_captured_packets_total{{interface="{iface}"}}', 0),
             kernel_drops=vals.get(f'tc_daemon_kernel_drops_total{{interface="{iface}"}}', 0),
             dropped={k: v for k, v in drops.items()}, counted=total(vals, "tc_daemon_packets_total"),
             skipped=total(vals, "tc_daemon_skipped_packets_total"),
             flows=total(vals, "tc_daemon_flows_total"), rx_packets=rx_packets(iface),
             capture_up=vals.get(f'tc_daemon_capture_up{{interface="{iface}"}}', 0))
    prev_cpu[:] = [now, cpu]
    return s, {k: v for k, v in vals.items() if SERIES.match(k)}


def rss_growth(samples, warmup=WARMUP):
    """(baseline, final, growth %): median RSS over the 5 % of the run after the warm-up, and over the last 5 %."""
    if len(samples) < 4:
        return None, None, None
    end = samples[-1]["t"]
    w = end * warmup
    base = [s["rss_bytes"] for s in samples if w <= s["t"] <= w + 0.05 * end] or \
        [next(s["rss_bytes"] for s in samples if s["t"] >= w)]
    final = [s["rss_bytes"] for s in samples if s["t"] >= 0.95 * end] or [samples[-1]["rss_bytes"]]
    b, f = _median(base), _median(final)
    return b, f, 100.0 * (f - b) / b


def rss_slope(samples, warmup=WARMUP):
    """Least-squares RSS slope after the warm-up, MiB per hour."""
    pts = [(s["t"], s["rss_bytes"] / 2**20) for s in samples if s["t"] >= samples[-1]["t"] * warmup]
    if len(pts) < 3:
        return None
    mt = sum(t for t, _ in pts) / len(pts)
    mr = sum(r for _, r in pts) / len(pts)
    den = sum((t - mt) ** 2 for t, _ in pts)
    return 3600 * sum((t - mt) * (r - mr) for t, r in pts) / den if den else None


def plot(samples, path, warmup_s, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t = [s["t"] / 60 for s in samples]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ax1.plot(t, [s["rss_bytes"] / 2**20 for s in samples], color="tab:blue", label="RSS")
    ax1.axvspan(0, warmup_s / 60, color="0.9", label="warm-up")
    ax1.set_ylabel("RSS (MiB)")
    lo = min(s["rss_bytes"] for s in samples) / 2**20
    ax1.set_ylim(lo * 0.9, max(s["rss_bytes"] for s in samples) / 2**20 * 1.05)
    ax1b = ax1.twinx()
    ax1b.plot(t, [s["flow_table"] for s in samples], color="tab:green", alpha=0.5, lw=0.8, label="flow table")
    ax1b.set_ylabel("flows in table", color="tab:green")
    ax1.legend(loc="upper left")
    ax1.set_title(title)
    ax2.plot(t, [sum(s["dropped"].values()) for s in samples], label="queue/model drops (cumulative)")
    ax2.plot(t, [s["kernel_drops"] for s in samples], label="kernel drops (cumulative)")
    ax2.set_ylabel("packets")
    ax2.set_ylim(0, max(1, max(max(sum(s["dropped"].values()), s["kernel_drops"]) for s in samples) * 1.1))
    ax2.set_xlabel("minutes")
    ax2b = ax2.twinx()
    ax2b.plot(t, [s["cpu_percent"] for s in samples], color="0.6", lw=0.6, label="CPU %")
    ax2b.set_ylabel("daemon CPU %", color="0.4")
    ax2b.set_ylim(0, max(5, max(s["cpu_percent"] for s in samples) * 1.1))
    ax2.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def dump(result, f):
    """JSON with one line per sample (an hour at 5 s is 720 of them)."""
    head = dict(result, samples=None)
    text = json.dumps(head, indent=1)
    lines = ",\n".join("  " + json.dumps(s, separators=(",", ":")) for s in result["samples"])
    f.write(text.replace('"samples": null', '"samples": [\n' + lines + "\n ]") + "\n")


def _table(rows):
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{w}}  {v}" for k, v in rows)


class _Stop(Exception):
    pass


def run(a) -> int:
    if os.geteuid() != 0:
        print("soak: needs root (network namespace, veth, AF_PACKET)", file=sys.stderr)
        return 1
    for tool in ("ip", "tcpreplay"):
        if not shutil.which(tool):
            print(f"soak: needs {tool}", file=sys.stderr)
            return 1
    files, n_frames = ethernet_captures(a.corpus, limit=a.captures)
    if not files:
        print(f"soak: no Ethernet captures in {a.corpus}", file=sys.stderr)
        return 1
    os.makedirs(a.out, exist_ok=True)
    seconds = a.minutes * 60
    tag = f"tcs{os.getpid() % 100000}"
    ns, ia, ib = tag + "ns", tag + "a", tag + "b"
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    tmp = tempfile.mkdtemp(prefix="tc-soak-")
    cfg_text = (f"capture:\n  interfaces: [{ia}]\n  ignore_outgoing: true\npipeline:\n  mode: {a.mode}\n"
                f"  max_flows: {a.max_flows}\n  idle_timeout: {a.idle_timeout}\n"
                f"metrics:\n  listen: 127.0.0.1:{port}\n")
    if a.model:
        cfg_text += f"model:\n  name: {a.model}\n"
    cfg = os.path.join(tmp, "config.yaml")
    with open(cfg, "w") as f:
        f.write(cfg_text)

    def on_signal(*_):
        raise _Stop()
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    daemon = replay = None
    samples, failures, monotonic_errors = [], [], []
    last_series = {}
    start_wall = time.time()
    rx0 = None
    exit_code = None
    stopped_early = False
    identity = {}
    log_path = os.path.join(a.out, "soak-daemon.log")
    try:
        sh("ip", "netns", "add", ns)
        make_link(ns, ia, ib)
        exe = shutil.which("tc-daemon", path=os.path.dirname(sys.executable)) or shutil.which("tc-daemon")
        daemon_log = open(log_path, "w")
        daemon = subprocess.Popen([exe, "run", "-c", cfg], stdout=subprocess.DEVNULL, stderr=daemon_log)
        for _ in range(300):
            try:
                vals = scrape(url)
                if vals.get(f'tc_daemon_capture_up{{interface="{ia}"}}') == 1:
                    break
            except OSError:
                pass
            if daemon.poll() is not None:
                raise RuntimeError(f"daemon exited {daemon.returncode}; see {log_path}")
            time.sleep(0.2)
        rx0 = rx_packets(ia)
        print(f"soak: {a.minutes:g} min at {a.rate} packets/s, {a.mode} mode, {len(files)} captures "
              f"({n_frames} frames a loop, new addresses each loop): "
              f"{', '.join(os.path.basename(p) for p in files)}; daemon pid {daemon.pid}, metrics {url}",
              flush=True)
        replay = subprocess.Popen(["ip", "netns", "exec", ns, "tcpreplay", "-q", "-i", ib, f"--pps={a.rate}",
                                   "--loop=0", "--unique-ip", "--preload-pcap", f"--duration={int(seconds)}",
                                   *files], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        t0 = time.monotonic()
        prev_cpu = [t0, proc_stats(daemon.pid)[1]]
        next_sample, next_progress = t0, t0 + a.progress
        while True:
            now = time.monotonic()
            if now - t0 >= seconds:
                break
            if daemon.poll() is not None:
                failures.append(f"daemon exited {daemon.returncode} at {now - t0:.0f} s")
                break
            time.sleep(max(0.0, next_sample - now))
            next_sample += a.interval
            try:
                s, series = sample(url, daemon.pid, ia, t0, prev_cpu)
            except OSError as e:
                failures.append(f"scrape failed at {time.monotonic() - t0:.0f} s: {e}")
                continue
            for k, v in series.items():
                if v < last_series.get(k, 0):
                    monotonic_errors.append(f"{k} went from {last_series[k]} to {v} at {s['t']:.0f} s")
                last_series[k] = v
            samples.append(s)
            if time.monotonic() >= next_progress:
                next_progress += a.progress
                print(f"  {s['t'] / 60:5.1f} min  rss {s['rss_bytes'] / 2**20:6.1f} MiB  cpu {s['cpu_percent']:5.1f}%"
                      f"  flows {s['flow_table']:6.0f}  captured {s['captured']:10.0f}  "
                      f"drops {sum(s['dropped'].values()):.0f}+kernel {s['kernel_drops']:.0f}", flush=True)
    except _Stop:
        stopped_early = True
        print("soak: stopped early; writing what was sampled", flush=True)
    finally:
        for s_, h in old.items():
            signal.signal(s_, h)
        replay_out = ""
        if replay is not None:
            if replay.poll() is None:
                replay.send_signal(signal.SIGINT)  # tcpreplay prints its totals on SIGINT
            try:
                replay_out = replay.communicate(timeout=15)[0]
            except subprocess.TimeoutExpired:
                replay.kill()
                replay_out = replay.communicate()[0]
        if daemon is not None and daemon.poll() is None:
            try:  # no silent loss: let every flow end, then compare
                time.sleep(2)
                end = time.monotonic() + a.idle_timeout + 15
                vals = scrape(url)
                while time.monotonic() < end and vals.get("tc_daemon_flow_table_entries", 1) > 0:
                    time.sleep(1)
                    vals = scrape(url)
                time.sleep(1.5)  # one more PACKET_STATISTICS read
                vals = scrape(url)
                rx = rx_packets(ia) - rx0
                cap = vals.get(f'tc_daemon_captured_packets_total{{interface="{ia}"}}', 0)
                kd = vals.get(f'tc_daemon_kernel_drops_total{{interface="{ia}"}}', 0)
                counted = total(vals, "tc_daemon_packets_total") + total(vals, "tc_daemon_skipped_packets_total")
                m = re.search(r"Actual: (\d+) packets", replay_out)
                identity = dict(sent=int(m.group(1)) if m else None, interface_rx=rx, captured=cap,
                                kernel_drops=kd, counted_plus_skipped=counted,
                                flow_table_at_end=vals.get("tc_daemon_flow_table_entries"),
                                rx_equals_captured_plus_kernel_drops=rx == cap + kd,
                                captured_equals_counted_plus_skipped=cap == counted)
            except OSError as e:
                failures.append(f"final scrape failed: {e}")
            daemon.send_signal(signal.SIGTERM)
            try:
                exit_code = daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                exit_code = daemon.wait()
                failures.append("daemon did not stop within 30 s of SIGTERM")
        elif daemon is not None:
            exit_code = daemon.returncode
        remove(ns, ia)
        shutil.rmtree(tmp, ignore_errors=True)

    if not samples:
        print("soak: no samples", file=sys.stderr)
        return 1
    base, final, growth = rss_growth(samples)
    slope = rss_slope(samples)
    max_table = max(s["flow_table"] for s in samples)
    last = samples[-1]
    checks = dict(
        daemon_up_throughout=not failures and all(s["capture_up"] == 1 for s in samples),
        exit_0_on_sigterm=exit_code == 0,
        counters_monotonic=not monotonic_errors,
        flow_table_bounded=max_table <= a.max_flows,
        rss_growth_under_limit=growth is not None and growth < a.max_growth,
        no_silent_loss=bool(identity) and identity["rx_equals_captured_plus_kernel_drops"]
        and identity["captured_equals_counted_plus_skipped"],
    )
    verdict = "PASS" if all(checks.values()) else "FAIL"
    summary = dict(
        duration_s=last["t"], samples=len(samples), rss_start_bytes=samples[0]["rss_bytes"],
        rss_baseline_bytes=base, rss_final_bytes=final, rss_max_bytes=max(s["rss_bytes"] for s in samples),
        rss_growth_percent=round(growth, 2) if growth is not None else None,
        rss_slope_mib_per_hour=round(slope, 3) if slope is not None else None,
        cpu_mean_percent=round(statistics.mean(s["cpu_percent"] for s in samples[1:]), 1) if len(samples) > 1
        else None,
        flow_table_max=max_table, captured=last["captured"], packets_counted=last["counted"],
        flows_decided=last["flows"], dropped=last["dropped"], kernel_drops=last["kernel_drops"],
        mean_rate_pps=round(last["captured"] / last["t"], 1) if last["t"] else None)
    result = dict(command=" ".join(["python -m bench.soak"] + sys.argv[1:]), started=start_wall,
                  stopped_early=stopped_early, args=vars(a), config=cfg_text, captures=[os.path.basename(p)
                                                                                      for p in files],
                  machine=_machine(), summary=summary, identity=identity, checks=checks, verdict=verdict,
                  failures=failures, monotonic_errors=monotonic_errors[:50], daemon_exit_code=exit_code,
                  replay=replay_out.strip().splitlines(), samples=samples)
    jpath, ppath = os.path.join(a.out, "soak.json"), os.path.join(a.out, "soak.png")
    with open(jpath, "w") as f:
        dump(result, f)
    plot(samples, ppath, last["t"] * WARMUP,
         f"tc-daemon soak: {last['t'] / 60:.0f} min at {a.rate} pps ({a.mode} mode); RSS growth after warm-up "
         f"{growth:+.2f} %" if growth is not None else "tc-daemon soak")
    mib = lambda b: f"{b / 2**20:.1f} MiB" if b is not None else "-"  # noqa: E731
    print(_table([
        ("duration", f"{last['t'] / 60:.1f} min ({len(samples)} samples)"),
        ("rate asked / captured", f"{a.rate} / {summary['mean_rate_pps']} packets/s"),
        ("RSS start / baseline / final / max", f"{mib(samples[0]['rss_bytes'])} / {mib(base)} / {mib(final)} / "
                                               f"{mib(summary['rss_max_bytes'])}"),
        ("RSS growth after warm-up", f"{growth:+.2f} % (limit {a.max_growth} %)" if growth is not None else "-"),
        ("RSS slope after warm-up", f"{slope:+.2f} MiB/h" if slope is not None else "-"),
        ("daemon CPU (mean)", f"{summary['cpu_mean_percent']} %"),
        ("flow table max / limit", f"{max_table:.0f} / {a.max_flows}"),
        ("captured / counted", f"{last['captured']:.0f} / {last['counted']:.0f}"),
        ("flows decided", f"{last['flows']:.0f}"),
        ("drops (queue, by reason)", ", ".join(f"{k} {v:.0f}" for k, v in last["dropped"].items())),
        ("kernel drops", f"{last['kernel_drops']:.0f}"),
        ("interface rx = captured + kernel drops", str(identity.get("rx_equals_captured_plus_kernel_drops"))),
        ("captured = counted + skipped (flows ended)", str(identity.get("captured_equals_counted_plus_skipped"))),
    ] + [(f"check {k}", "ok" if v else "FAILED") for k, v in checks.items()]))
    for line in failures + monotonic_errors[:5]:
        print("  " + line)
    print(f"soak verdict: {verdict} (RSS growth {growth:+.2f} % after a {WARMUP:.0%} warm-up); wrote {jpath}, "
          f"{ppath}" if growth is not None else f"soak verdict: {verdict}", flush=True)
    return 0 if verdict == "PASS" else 1


def _machine():
    try:
        from bench.machine import describe
        return describe()
    except Exception:  # a description is a nicety, not a reason to lose the run
        return {}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=60.0, help="how long to replay (default 60)")
    p.add_argument("--rate", type=int, default=2000, help="packets/s sent (default 2000)")
    p.add_argument("--out", default="docs/soak", help="folder for soak.json, soak.png, soak-daemon.log")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between samples (default 5)")
    p.add_argument("--progress", type=float, default=60.0, help="seconds between progress lines (default 60)")
    p.add_argument("--captures", type=int, default=4, help="how many corpus captures to loop (the largest "
                                                          "Ethernet ones; default 4)")
    p.add_argument("--corpus", default=DEFAULT_CORPUS)
    p.add_argument("--mode", choices=("flow", "packet"), default="flow")
    p.add_argument("--model", default=None, help="model name (default: the daemon's choice)")
    p.add_argument("--max-flows", type=int, default=65536, help="pipeline.max_flows (default 65536)")
    p.add_argument("--idle-timeout", type=float, default=30.0, help="pipeline.idle_timeout, s (default 30)")
    p.add_argument("--max-growth", type=float, default=5.0, help="RSS growth limit after warm-up, %% (default 5)")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
