"""The torch runtime's model processes, without the platform around them: the LRU cache ends a
model's process when it evicts it, and everything a process sends back is checked."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.integration import torch_models
from workers.runtime import ModelCache
from workers.torch_runtime import TorchModelSpec

pytestmark = pytest.mark.usefixtures("isolated")

SOURCE = Path(torch_models.__file__)
SIGNATURE = {"inputs": [{"name": "x", "dtype": "float32", "shape": [None, 4]}],
             "outputs": [{"name": "output", "dtype": "float32", "shape": [None, 3]}]}


def _spec(tmp_path: Path, seed: int) -> TorchModelSpec:
    torch.manual_seed(seed)
    weights = tmp_path / f"branch{seed}.safetensors"
    save_file(torch_models.Branch().state_dict(), str(weights))
    return TorchModelSpec(fmt="state_dict", artifact=weights, source=SOURCE, entrypoint="Branch", init_kwargs={},
                          signature=SIGNATURE, artifact_suffix=".safetensors")


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                if "State:\tZ" not in f.read():
                    alive.add(pid)
        except OSError:
            pass
    return alive


def test_eviction_ends_the_model_process_and_frees_its_memory(tmp_path: Path) -> None:
    first = _spec(tmp_path, 1)
    cache = ModelCache(host_budget_bytes=1, torch_memory_bytes=1024 * 2**20, use_cuda=False)
    model = cache.get("1", Path("unused"), torch_spec=first)
    try:
        assert model.runtime == "torch"
        pids = model.session.job_pids()
        assert len(pids) >= 3  # launcher's namespace parent, init, the model process
        assert model.host_bytes > 50 * 2**20  # the process's memory counts (torch is loaded)
        x = np.ones((2, 4), dtype=np.float32)
        assert model.run({"x": x}, time.monotonic() + 10)[0][1].shape == (2, 3)
        # A second model does not fit next to it: the first one's process ends.
        second = cache.get("2", Path("unused"), torch_spec=_spec(tmp_path, 2))
        assert cache.loaded() == ["2"]
        assert cache.evictions == 1
        deadline = time.monotonic() + 5
        while _alive(pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _alive(pids) == set()
        assert not model.session.alive()
        assert second.run({"x": x}, time.monotonic() + 10)[0][0] == "output"
    finally:
        for key in cache.loaded():
            cache.evict(key)
