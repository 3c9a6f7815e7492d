"""Run a TFLite model over batches of payload bytes.

Only a TFLite interpreter: `ai_edge_litert` (the renamed tflite-runtime)
first, `tflite_runtime` as the fallback that 32-bit ARM still has. One
interpreter thread by default: a second one gave nothing at batch 1 on a
2-core gateway and takes a core from capture.
"""
from __future__ import annotations

import contextlib
import os
import sys

import numpy as np

from .features import VIEWS, as_flat, model_input


class ModelError(Exception):
    """A model that cannot be used: missing, corrupt, or not what the manifest says."""


_silenced_once = False


@contextlib.contextmanager
def _runtime_info_silenced():
    """The TFLite C++ runtime writes "INFO: Created TensorFlow Lite XNNPACK delegate" straight to
    fd 2 when an interpreter is built, which would land in every `classify` output and journal.
    Point fd 2 at /dev/null for that moment only, and only the first time (the runtime says it
    once per process), so a reload never hides another thread's log line; errors still arrive
    as Python exceptions."""
    global _silenced_once
    if _silenced_once:
        yield
        return
    _silenced_once = True
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2: nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def load_interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise ModelError("no TFLite interpreter: pip install ai-edge-litert "
                             "(or tflite-runtime on 32-bit ARM)") from None
    return Interpreter


BUCKETS = (1, 8, 64, 256)  # batch sizes we allocate for; a batch is padded up to the next one


class Classifier:
    """A TFLite model with a fixed input view ('flat' or 'sequence').

    `predict(x)` takes uint8[N,1480] from daemon.features.payload_bytes and
    returns float32 probabilities [N, classes]. Full-int8 models are fed the
    raw bytes XOR 0x80 (no float conversion) when their input quantisation is
    the expected scale 1/255, zero point -128.
    """

    def __init__(self, path: str, view: str = "flat", num_threads: int = 1, max_batch: int = 256,
                 content: bytes = None):
        if view not in VIEWS:
            raise ModelError(f"{path}: unknown input view {view!r}")
        load_interpreter_class()  # no runtime installed: say so before reading the file
        self.path, self.view, self.num_threads = path, view, num_threads
        self.buckets = tuple(b for b in BUCKETS if b < max_batch) + (max_batch,)
        try:
            if content is None:
                with open(path, "rb") as f:
                    content = f.read()
            self._content = content
            self._interps = {}
            probe = self._interp(1)[0]
        except ModelError:
            raise
        except (OSError, ValueError, RuntimeError) as e:
            raise ModelError(f"{path}: cannot load model ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        inp = probe.get_input_details()[0]
        out = probe.get_output_details()[0]
        self.input_dtype = np.dtype(inp["dtype"])
        self.in_scale, self.in_zero = inp["quantization"]
        self.out_dtype = np.dtype(out["dtype"])
        self.out_scale, self.out_zero = out["quantization"]
        self.n_classes = int(out["shape"][-1])
        want = tuple(VIEWS[view])
        if tuple(inp["shape"][1:]) != want:
            raise ModelError(f"{path}: input shape {tuple(inp['shape'][1:])} does not match view {view!r} {want}")
        # the raw-bytes path holds only for this exact quantisation
        self.raw_bytes = (self.input_dtype == np.int8 and abs(self.in_scale - 1 / 255) < 1e-9
                          and self.in_zero == -128)

    def _interp(self, batch: int):
        it = self._interps.get(batch)
        if it is None:
            Interpreter = load_interpreter_class()
            with _runtime_info_silenced():
                it = Interpreter(model_content=self._content, num_threads=self.num_threads)
                idx = it.get_input_details()[0]["index"]
                shape = list(it.get_input_details()[0]["shape"])
                shape[0] = batch
                it.resize_tensor_input(idx, shape)
                it.allocate_tensors()
            it = (it, idx, it.get_output_details()[0]["index"])
            self._interps[batch] = it
        return it

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        if self.raw_bytes or self.input_dtype != np.int8:
            return model_input(x, self.view, self.input_dtype)
        # an int8 model with an unusual input quantisation: quantise the floats ourselves
        f = as_flat(x).reshape(-1, *VIEWS[self.view])
        return np.clip(np.round(f / self.in_scale + self.in_zero), -128, 127).astype(np.int8)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """float32[N, classes] for uint8[N,1480]."""
        n = len(x)
        out = np.empty((n, self.n_classes), np.float32)
        big = self.buckets[-1]
        for s in range(0, n, big):
            chunk = x[s:s + big]
            m = len(chunk)
            b = next(b for b in self.buckets if b >= m)
            it, in_idx, out_idx = self._interp(b)
            inp = self._prepare(chunk)
            if m < b:
                inp = np.concatenate([inp, np.zeros((b - m,) + inp.shape[1:], inp.dtype)])
            it.set_tensor(in_idx, inp)
            it.invoke()
            y = it.get_tensor(out_idx)[:m]
            if self.out_dtype != np.float32:
                y = (y.astype(np.float32) - self.out_zero) * self.out_scale
            out[s:s + m] = y
        return out
