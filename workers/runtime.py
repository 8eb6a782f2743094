"""The serving runtime on a worker: an LRU cache of loaded models under memory budgets.

A loaded model is an onnxruntime session in this process, or (runtime "torch") a sandboxed model
process owned through `workers.torch_runtime.TorchSession`; eviction ends that process, which
frees all of its memory.

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
    runtime: str = "onnx"

    def run(self, feeds: dict[str, np.ndarray], deadline: float | None = None) -> list[tuple[str, np.ndarray]]:
        """Outputs by name. `deadline` (time.monotonic()) bounds a torch-runtime call; raises
        `workers.torch_runtime.ModelCallError` subclasses for its faults."""
        if self.runtime == "torch":
            results = self.session.run(self.output_names, feeds, deadline)
        else:
            results = self.session.run(self.output_names, feeds)
        return list(zip(self.output_names, results, strict=True))

    def close(self) -> None:
        """Free what the model holds now (a torch model's process ends)."""
        close = getattr(self.session, "close", None)
        if self.runtime == "torch" and close is not None:
            close()


class ModelCache:
    """Loaded models keyed by version, evicting least-recently-used ones to fit the budgets.

    Eviction drops the last reference to the session (and runs the GC) so onnxruntime frees
    its memory; on CUDA each session has its own arena capped by `gpu_mem_limit`.
    """

    def __init__(self, *, host_budget_bytes: int, device_budget_bytes: int = 0, threads: int = 1,
                 use_cuda: bool | None = None, torch_memory_bytes: int = 4 * 1024**3,
                 allow_unsandboxed: bool = False) -> None:
        self.host_budget = host_budget_bytes
        self.torch_memory_bytes = torch_memory_bytes
        self.allow_unsandboxed = allow_unsandboxed
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

    def get(self, key: str, path: Path, *, device_limit_bytes: int | None = None,
            torch_spec: Any = None) -> LoadedModel:
        """The loaded model for `key`, loading it (and evicting others to fit) if needed.
        `torch_spec` (a `workers.torch_runtime.TorchModelSpec`) loads it on the torch runtime."""
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
                return model
        if torch_spec is not None:
            model = self._load_torch(key, torch_spec)
        else:
            model = self._load(key, path, device_limit_bytes=device_limit_bytes)
        with self._lock:
            existing = self._models.get(key)
            if existing is not None:
                model.close()
                return existing
            self._make_room(model.host_bytes, model.device_bytes)
            self._models[key] = model
            return model

    def evict(self, key: str) -> bool:
        with self._lock:
            model = self._models.pop(key, None)
        if model is None:
            return False
        model.close()
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
            old.close()
            del old
            self.evictions += 1
        gc.collect()

    def _load_torch(self, key: str, spec: Any) -> LoadedModel:
        from workers.torch_runtime import TorchLimits, TorchSession

        start = time.perf_counter()
        session = TorchSession(spec, TorchLimits(memory_bytes=self.torch_memory_bytes, threads=self.threads),
                               allow_unsandboxed=self.allow_unsandboxed)
        # The process's whole resident memory counts against the budget (its memory cgroup).
        host = session.memory_bytes() or self.torch_memory_bytes
        return LoadedModel(key=key, session=session, inputs=list(spec.signature["inputs"]),
                           output_names=[o["name"] for o in spec.signature["outputs"]], host_bytes=host,
                           device_bytes=0, provider="torch-cpu", runtime="torch",
                           load_ms=(time.perf_counter() - start) * 1000.0)

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
