"""What a benchmark ran on: CPU, cores, versions."""
import os
import platform
import sys


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> dict:
    import numpy
    info = dict(cpu=cpu_model(), cores=os.cpu_count(), machine=platform.machine(),
                kernel=platform.release(), python=sys.version.split()[0], numpy=numpy.__version__)
    for mod in ("ai_edge_litert", "tflite_runtime", "tensorflow"):
        try:
            from importlib.metadata import version
            info[mod] = version({"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime",
                                 "tensorflow": "tensorflow-cpu"}[mod])
        except Exception:
            pass
    from daemon import __version__
    info["tc_daemon"] = __version__
    return info


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0
