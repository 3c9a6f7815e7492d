"""The model a pipeline runs: manifest entry, TFLite classifier and reject threshold.

Chosen from the config (or command-line overrides) through the registry:
a name, a .tflite path, or the most accurate model within the memory budget.
Everything that can go wrong is a ModelError of one line.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import List, Optional

from . import registry
from .classifier import Classifier, ModelError

log = logging.getLogger("tc-daemon")


@dataclass
class LoadedModel:
    entry: dict
    classifier: Classifier
    threshold: float

    @property
    def classes(self) -> List[str]:
        return list(self.entry["classes"])

    @property
    def name(self) -> str:
        return self.entry["name"]


def load(name: Optional[str] = None, memory_budget=None, min_pps=None, threads: int = 1,
         threshold: Optional[float] = None, max_batch: int = 64, directory: Optional[str] = None) -> LoadedModel:
    """Load by name/path, else choose by budget. `memory_budget` may be bytes or '2MiB'."""
    directory = directory or os.environ.get("TC_DAEMON_MODELS_DIR") or registry.SHIPPED_DIR
    try:
        budget = registry.parse_size(memory_budget) if memory_budget is not None else None
    except ValueError as e:
        raise ModelError(str(e)) from None
    if name and (name.endswith(".tflite") or os.sep in name):
        if not os.path.exists(name):
            raise ModelError(f"{name}: no such model file")
        entry, clf = registry.load_path(name, num_threads=threads, max_batch=max_batch)
    else:
        if name:
            entry = registry.find(name, directory)
            clf = registry.open_model(entry, directory, num_threads=threads, max_batch=max_batch)
        else:
            entry, clf = _open_best(registry.candidates(registry.load_manifest(directory)["models"], budget,
                                                        min_pps), directory, threads, max_batch)
    if threshold is None:
        threshold = float(entry.get("reject_threshold") or 0.0)
    return LoadedModel(entry, clf, threshold)


def _open_best(ranked, directory, threads, max_batch):
    """The best model this interpreter can build. An older runtime (tflite-runtime 2.14, all that
    32-bit ARM has) lacks newer op versions, e.g. the dynamic-range FULLY_CONNECTED: skip such a
    model with one log line rather than fail. A corrupt or mismatched file is still an error."""
    for i, entry in enumerate(ranked):
        entry = dict(entry, path=os.path.join(directory, entry["file"]))
        try:
            return entry, registry.open_model(entry, directory, num_threads=threads, max_batch=max_batch)
        except ModelError as e:
            if "find op" not in str(e) or i == len(ranked) - 1:
                raise
            log.warning("%s needs a newer TFLite runtime (%s); trying the next model", entry["name"], e)


def from_config(cfg, name=None, memory_budget=None, threshold=None) -> LoadedModel:
    """The model a config names, with command-line overrides taking precedence."""
    m = cfg.model
    return load(name or m.name, memory_budget if memory_budget is not None else m.memory_budget, m.min_pps,
                m.threads, threshold if threshold is not None else m.reject_threshold,
                max_batch=cfg.pipeline.batch_size)
