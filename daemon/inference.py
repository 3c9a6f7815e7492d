"""The model in a process of its own: capture hands it a batch and goes on.

In flow mode the capture thread ran the model batches itself (a batch run on
another thread waited for the interpreter lock at each Python step), so a
burst of new flows held capture for several model runs in a row: at 50,000
packets/s that was the tail of the latency (docs/performance.md). Here the
batch's bytes go into shared memory and its slot number down a pipe; a child
process, forked once the model is loaded so that it shares the parent's pages,
runs the model on the other core and answers with the slot number. No Python
object crosses: the parent keeps each slot's packets and applies the answer.

    parent: payload bytes -> slot (shared memory) -- "slot, n" -->  child
            probabilities <- slot (shared memory) <-- "slot, ok" --  runs the model

A child that dies or stops answering is killed, its batches count as
model_error drops, and the pipeline runs the model itself from then on.
"""
from __future__ import annotations

import ctypes
import logging
import mmap
import os
import select
import signal
import struct
import time

import numpy as np

from .features import N_BYTES

log = logging.getLogger("tc-daemon")

_REQ = struct.Struct("II")    # slot, packets
_RES = struct.Struct("IIf")   # slot, 0 = ok / 1 = the model failed, seconds the model took
STUCK_AFTER = 10.0            # s without an answer to the oldest batch: the child is hung
_PR_SET_PDEATHSIG = 1
_inherited = []


class ModelProcessGone(Exception):
    """The child died or hung; the caller falls back to running the model itself."""


class InferenceProcess:
    """A forked child that runs `classifier.predict` on batches in `slots` shared-memory slots."""

    def __init__(self, classifier, batch_size: int, slots: int = 8):
        self.batch_size, self.n_classes = batch_size, classifier.n_classes
        x_bytes = slots * batch_size * N_BYTES
        self._mm = mmap.mmap(-1, x_bytes + slots * batch_size * self.n_classes * 4)  # MAP_SHARED: both see it
        self.x = np.ndarray((slots, batch_size, N_BYTES), np.uint8, self._mm)
        self.y = np.ndarray((slots, batch_size, self.n_classes), np.float32, self._mm, x_bytes)
        req_r, self._req = os.pipe()
        self._res, res_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns
            code = 1
            try:
                _serve(classifier, self.x, self.y, req_r, res_w)
                code = 0
            finally:
                os._exit(code)
        os.close(req_r)
        os.close(res_w)
        os.set_blocking(self._res, False)
        self.free = list(range(slots))
        self.inflight = {}   # slot -> (items, submitted at)
        self._partial = b""

    def fileno(self) -> int:
        """Readable when answers are waiting (for select)."""
        return self._res

    def submit(self, fill, n: int, items) -> bool:
        """`fill(out)` writes n packets' bytes into out (uint8[n, 1480]); False when every slot is busy."""
        if not self.free:
            return False
        slot = self.free.pop()
        fill(self.x[slot, :n])
        self.inflight[slot] = (items, time.monotonic())
        try:
            os.write(self._req, _REQ.pack(slot, n))
        except OSError as e:  # EPIPE: the child is gone; its batches come back through gone()
            raise ModelProcessGone(f"model process: {e.strerror or e}") from None
        return True

    def answers(self, timeout: float = 0.0):
        """[(items, probabilities float32[n, classes] or None, model seconds)] of the batches answered so far,
        waiting up to `timeout` for the first. The probabilities are a view into the slot: read them before
        the next submit. ModelProcessGone when the child died or hung."""
        if timeout > 0 and self.inflight:
            select.select([self._res], [], [], timeout)
        try:
            data = self._partial + os.read(self._res, _RES.size * len(self.y))
        except BlockingIOError:
            data = self._partial
            if self.inflight and time.monotonic() - min(t for _, t in self.inflight.values()) > STUCK_AFTER:
                raise ModelProcessGone(f"model process: no answer for {STUCK_AFTER:.0f} s") from None
            return []
        if not data:  # end of file: the child exited
            raise ModelProcessGone(f"model process {self.pid} exited ({self._reap()})")
        whole = len(data) - len(data) % _RES.size
        self._partial = data[whole:]
        out = []
        for slot, failed, seconds in _RES.iter_unpack(data[:whole]):
            items, _ = self.inflight.pop(slot)
            self.free.append(slot)
            out.append((items, None if failed else self.y[slot, :len(items)], seconds))
        return out

    def close(self, timeout: float = 2.0):
        """End the child (end of file on its pipe), kill it if it does not go; the batches in flight are
        returned unanswered."""
        for fd in (self._req, self._res):
            try:
                os.close(fd)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._reap(wait=False):
            time.sleep(0.01)
        if not self._reap(wait=False):
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._reap()
        left = [items for items, _ in self.inflight.values()]
        self.inflight.clear()
        return left

    def _reap(self, wait: bool = True) -> str:
        """'' while the child runs (wait=False); else how it ended."""
        try:
            pid, status = os.waitpid(self.pid, 0 if wait else os.WNOHANG)
        except ChildProcessError:
            return "reaped"
        if pid == 0:
            return ""
        self._status = ("killed by signal %d" % os.WTERMSIG(status) if os.WIFSIGNALED(status)
                        else "exit code %d" % os.WEXITSTATUS(status))
        return self._status


def _serve(classifier, x, y, req, res):
    """The child's loop: read a slot number, run the model on it, answer. Ends at end of file."""
    for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):  # the parent ends us by closing the pipe;
        signal.signal(s, signal.SIG_IGN)                       # systemd's SIGTERM to the group is for it
    try:  # and a parent killed outright takes us with it
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    for fd in os.listdir("/proc/self/fd"):  # capture sockets, the metrics socket...: the parent's, not ours
        if int(fd) not in (0, 1, 2, req, res):
            try:
                os.close(int(fd))
            except OSError:  # the directory's own fd, gone already
                pass
    # fresh interpreters: the parent's may own worker threads (model.threads > 1) that a fork does not
    # copy, and would wait for them forever. The parent's stay referenced, never run nor freed here.
    _inherited.append(classifier._interps)
    classifier._interps = {}
    buf = b""
    while True:
        chunk = os.read(req, _REQ.size * len(x))
        if not chunk:
            return
        buf += chunk
        while len(buf) >= _REQ.size:
            slot, n = _REQ.unpack_from(buf)
            buf = buf[_REQ.size:]
            t0 = time.monotonic()
            try:
                y[slot, :n] = classifier.predict(x[slot, :n])
                failed = 0
            except Exception as e:  # the parent counts the batch as model_error and logs it
                os.write(2, f"tc-daemon model process: inference failed on a batch of {n}: {e}\n".encode())
                failed = 1
            os.write(res, _RES.pack(slot, failed, time.monotonic() - t0))
