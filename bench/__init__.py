"""Benchmarks: `tc-daemon bench` (run.py) and the scripts beside it; see docs/performance.md."""
import os

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def from_checkout(*parts: str) -> str:
    """A path of the repository checkout (the corpus beside it, the Keras models): from the current
    directory, where the README's commands run (`pip install .` puts this package in site-packages, far
    from the clone), else beside this package (an editable install, or `python -m bench...` in a clone)."""
    here = os.path.normpath(os.path.join(os.getcwd(), *parts))
    return here if os.path.exists(here) else os.path.normpath(os.path.join(_ROOT, *parts))


DEFAULT_CORPUS = from_checkout("..", "shared", "data", "ndpi-pcaps", "pcap")  # every bench's captures
