"""Optional capture through pyshark (tshark), imported only when capture.backend is pyshark.

What it is, honestly: tshark dissects every packet fully and pyshark turns
each into Python objects, so it keeps up with under a thousand packets/s on a
gateway CPU, its memory grows over a long capture, and a malformed packet
that trips tshark or pyshark's parser can end the capture (the daemon then
logs one line and that interface stays down until a restart). It also has no
kernel drop counter and cannot stop between packets while the link is quiet.
It exists for comparison with the design card and for hosts where raw
sockets are not allowed but tshark's dumpcap is; use afpacket otherwise.

Install with `pip install 'tc-daemon[pyshark]'` (and the tshark package).
"""
from __future__ import annotations

import time

from .. import metrics as M
from ..packet import LINKTYPE_ETHERNET


class PysharkSource:
    live = True
    finite = False

    def __init__(self, interface: str, bpf_filter=None):
        try:
            import pyshark  # noqa: F401 - absolute import: the pip package, not this module
        except ImportError:
            raise ImportError("capture.backend pyshark needs: pip install 'tc-daemon[pyshark]' and tshark") from None
        if bpf_filter is not None and not isinstance(bpf_filter, str):
            raise ValueError("capture.bpf_filter: the pyshark backend takes a tcpdump expression, not instructions")
        self.name = self.interface = interface
        self.bpf_filter = bpf_filter
        self._cap = None
        self._up = M.CAPTURE_UP.labels(interface)

    def __iter__(self):
        import asyncio

        import pyshark
        asyncio.set_event_loop(asyncio.new_event_loop())  # pyshark needs a loop in this (capture) thread
        # include_raw + use_json: the frame's bytes, which is all the pipeline wants from tshark
        self._cap = pyshark.LiveCapture(interface=self.interface, bpf_filter=self.bpf_filter, use_json=True,
                                        include_raw=True)
        self._up.set(1)
        try:
            for pkt in self._cap.sniff_continuously():
                raw = pkt.get_raw_packet()
                yield LINKTYPE_ETHERNET, time.monotonic(), memoryview(raw)
        finally:
            self._up.set(0)

    def close(self):
        if self._cap is not None:
            try:
                self._cap.close()
            except Exception:  # noqa: BLE001 - pyshark's close raises on an already-dead tshark
                pass
        self._up.set(0)
