"""GPU check for the serving runtime (run on a machine with an NVIDIA GPU and onnxruntime-gpu).

    python bench/gpu_check.py            # prints a report; exit 1 on any failed check

Uses the same code the serving workers use (workers.runtime.ModelCache) on the small CNN:
1. the CUDA execution provider is selected, and outputs match the CPU provider (atol 1e-3);
2. the per-session device memory cap (gpu_mem_limit) holds: device memory used by this process
   stays under cap + CUDA context overhead while serving batches up to 32;
3. eviction frees device memory (measured with nvidia-smi before load / after load / after evict);
4. throughput of the cached session vs a plain in-process CUDA onnxruntime session, same batches.
Needs no database or Redis: the data plane around it is CPU code covered by the test suite.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]


def device_used_mb() -> float:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True).stdout
    return float(out.split()[0])


def cnn_onnx(path: Path) -> Path:
    sys.path.insert(0, str(REPO / "bench"))
    from run import cnn_onnx as build

    return build(path)


def throughput(run, x: np.ndarray, seconds: float = 3.0) -> float:
    for _ in range(20):
        run(x)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run(x)
        n += x.shape[0]
    return n / (time.perf_counter() - start)


def main() -> int:
    import onnxruntime as ort

    from workers.runtime import ModelCache

    failures = []
    print("providers:", ort.get_available_providers())
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print("FAIL: CUDAExecutionProvider not available")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        model_path = cnn_onnx(Path(tmp) / "cnn.onnx")
        cap = 256 * 1024 * 1024
        before = device_used_mb()
        cache = ModelCache(host_budget_bytes=1 << 30, device_budget_bytes=1 << 30, use_cuda=True)
        gpu = cache.get("cnn", model_path, device_limit_bytes=cap)
        cpu = ModelCache(host_budget_bytes=1 << 30, use_cuda=False).get("cnn", model_path)
        print("serving provider:", gpu.provider)
        if gpu.provider != "CUDAExecutionProvider":
            failures.append("the cache did not pick the CUDA provider")
        rng = np.random.default_rng(0)
        worst = 0.0
        for batch in (1, 8, 32):
            x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
            a, b = gpu.run({"x": x})[0][1], cpu.run({"x": x})[0][1]
            worst = max(worst, float(np.max(np.abs(a - b))))
        print(f"max |CUDA - CPU| = {worst:.2e}")
        if worst > 1e-3:
            failures.append(f"CUDA outputs differ from CPU by {worst}")
        loaded = device_used_mb()
        grown = loaded - before
        print(f"device memory: before {before:.0f} MiB, loaded {loaded:.0f} MiB (+{grown:.0f}), cap {cap >> 20} MiB")
        if grown > (cap >> 20) + 600:  # CUDA context + cuDNN workspace come on top of the arena
            failures.append(f"device memory grew {grown:.0f} MiB, beyond the {cap >> 20} MiB cap + context")
        x = rng.standard_normal((32, 3, 32, 32)).astype(np.float32)
        ours = throughput(lambda v: gpu.run({"x": v}), x)
        plain = ort.InferenceSession(str(model_path), providers=["CUDAExecutionProvider"])
        theirs = throughput(lambda v: plain.run(None, {"x": v}), x)
        print(f"throughput batch 32: cached session {ours:.0f}/s, plain CUDA session {theirs:.0f}/s, "
              f"ratio {ours / theirs:.2f}")
        plain = None
        cache.evict("cnn")
        gpu = None
        time.sleep(1)
        after = device_used_mb()
        print(f"device memory after eviction: {after:.0f} MiB (freed {loaded - after:.0f} MiB)")
        if after > before + 600:
            failures.append("eviction did not release the session's device memory")
    for failure in failures:
        print("FAIL:", failure)
    print("OK" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
