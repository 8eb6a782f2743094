"""The serving runtime on a worker: an LRU cache of onnxruntime sessions under memory budgets.

Django-free. Thread-safety: `ModelCache` methods take an internal lock; a `LoadedModel` may be
run from one thread at a time (the serving loop is single-threaded per process).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workers.signature import sample_input, tensor_spec

log = logging.getLogger(__name__)
_EXTERNAL_DATA_PROBE_BYTES = 64 * 1024 * 1024


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


@dataclass
class LoadedModel:
    key: str
    session: Any
    inputs: list[dict[str, Any]]
    output_names: list[str]
    host_bytes: int
    device_bytes: int
    provider: str
    loaded_at: float = field(default_factory=time.monotonic)
    load_ms: float = 0.0

    def run(self, feeds: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
        results = self.session.run(self.output_names, feeds)
        return list(zip(self.output_names, results, strict=True))


class ModelCache:
    """Loaded models keyed by version, evicting least-recently-used ones to fit the budgets.

    Eviction drops the last reference to the session (and runs the GC) so onnxruntime frees
    its memory; on CUDA each session has its own arena capped by `gpu_mem_limit`.
    """

    def __init__(self, *, host_budget_bytes: int, device_budget_bytes: int = 0, threads: int = 1,
                 use_cuda: bool | None = None) -> None:
        self.host_budget = host_budget_bytes
        self.device_budget = device_budget_bytes
        self.threads = threads
        if use_cuda is None:
            use_cuda = "CUDAExecutionProvider" in available_providers()
        self.use_cuda = use_cuda
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self.evictions = 0

    @property
    def hardware(self) -> str:
        return "gpu" if self.use_cuda else "cpu"

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._models)

    def used_bytes(self) -> tuple[int, int]:
        with self._lock:
            return (sum(m.host_bytes for m in self._models.values()),
                    sum(m.device_bytes for m in self._models.values()))

    def get(self, key: str, path: Path, *, device_limit_bytes: int | None = None) -> LoadedModel:
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
                return model
        model = self._load(key, path, device_limit_bytes=device_limit_bytes)
        with self._lock:
            existing = self._models.get(key)
            if existing is not None:
                return existing
            self._make_room(model.host_bytes, model.device_bytes)
            self._models[key] = model
            return model

    def evict(self, key: str) -> bool:
        with self._lock:
            model = self._models.pop(key, None)
        if model is None:
            return False
        del model
        gc.collect()
        self.evictions += 1
        return True

    def _make_room(self, host: int, device: int) -> None:
        # Called with the lock held.
        while self._models and (
            sum(m.host_bytes for m in self._models.values()) + host > self.host_budget
            or (self.use_cuda and self.device_budget
                and sum(m.device_bytes for m in self._models.values()) + device > self.device_budget)
        ):
            old_key, old = self._models.popitem(last=False)
            log.info("evicting %s to fit the memory budget", old_key)
            del old
            self.evictions += 1
        gc.collect()

    def _load(self, key: str, path: Path, *, device_limit_bytes: int | None) -> LoadedModel:
        import onnxruntime as ort

        start = time.perf_counter()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        size = path.stat().st_size
        if size < _EXTERNAL_DATA_PROBE_BYTES:
            # A converted model over ~1.9 GB is a small graph file plus data files beside it
            # (workers.external_data); count those too. A big file holds its own tensors.
            from workers.external_data import external_data_bytes

            size += external_data_bytes(path)
        providers: list[Any] = ["CPUExecutionProvider"]
        device_bytes = 0
        if self.use_cuda:
            limit = device_limit_bytes or max(4 * size, 256 * 1024 * 1024)
            providers = [
                ("CUDAExecutionProvider", {"gpu_mem_limit": str(limit), "arena_extend_strategy": "kSameAsRequested"}),
                "CPUExecutionProvider",
            ]
            device_bytes = limit
        session = ort.InferenceSession(str(path), options, providers=providers)
        inputs = [tensor_spec(i.name, i.type, list(i.shape)) for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        model = LoadedModel(key=key, session=session, inputs=inputs, output_names=outputs,
                            host_bytes=2 * size + 1024 * 1024, device_bytes=device_bytes,
                            provider=session.get_providers()[0])
        # Warm up once so the first paying call does not pay for lazy initialisation.
        rng = np.random.default_rng(0)
        model.run({s["name"]: sample_input(s, dynamic_size=1, rng=rng) for s in inputs})
        model.load_ms = (time.perf_counter() - start) * 1000.0
        return model
