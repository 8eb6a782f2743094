"""The torch runtime's own cost, as ratios against baselines measured in the same run.

    python bench/torch_runtime.py [--seconds 3]

For a CIFAR-size CNN and the pack_padded_sequence GRU (tests/integration/torch_models.py), on
the CPU with one thread everywhere:
- eager PyTorch in this process (the baseline the runtime is held to);
- the torch runtime: the same model in a sandboxed model process (workers.torch_runtime),
  called over its socketpair as the serving loop calls it;
- for the CNN, onnxruntime in this process on its ONNX export (the ONNX path's runtime).
c=1 is the p50 of one-row calls. "batched" is rows/s with 32-row calls: what dynamic batching
hands the runtime at concurrency 32. This measures the runtimes, not HTTP: the web tier, Redis
and metering cost the same on both paths (bench/run.py measures those).
Goals (issue 19): batched torch runtime >= 0.8x eager; c=1 p50 overhead <= 1 ms over ONNX's.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration import torch_models as models  # noqa: E402
from workers.torch_runtime import TorchLimits, TorchModelSpec, TorchSession  # noqa: E402

SOURCE = Path(models.__file__)


def timed(fn: Callable[[], object], seconds: float) -> list[float]:
    """Seconds per call, calling `fn` for about `seconds` (at least 20 calls, at most 100,000)."""
    for _ in range(5):
        fn()
    out: list[float] = []
    end = time.perf_counter() + seconds
    while (time.perf_counter() < end or len(out) < 20) and len(out) < 100_000:
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def p50_ms(samples: list[float]) -> float:
    return float(np.median(samples)) * 1000.0


def rows_per_s(samples: list[float], rows: int) -> float:
    return rows / float(np.mean(samples))


def bench_model(name: str, model: torch.nn.Module, entrypoint: str, feeds1: dict[str, np.ndarray],
                feeds32: dict[str, np.ndarray], outputs: list[dict], seconds: float, tmp: Path,
                onnx: bool) -> dict[str, float]:
    from safetensors.torch import save_file

    weights = tmp / f"{name}.safetensors"
    save_file(model.state_dict(), str(weights))
    inputs = [{"name": k, "dtype": str(v.dtype), "shape": [None, *v.shape[1:]]} for k, v in feeds1.items()]
    spec = TorchModelSpec(fmt="state_dict", artifact=weights, source=SOURCE, entrypoint=entrypoint, init_kwargs={},
                          signature={"inputs": inputs, "outputs": outputs}, artifact_suffix=".safetensors")
    torch.set_num_threads(1)
    names = [o["name"] for o in outputs]

    def eager(feeds: dict[str, np.ndarray]) -> Callable[[], object]:
        tensors = [torch.from_numpy(v) for v in feeds.values()]

        def run() -> object:
            with torch.inference_mode():
                return model(*tensors)
        return run

    figures: dict[str, float] = {}
    session = TorchSession(spec, TorchLimits(threads=1))
    try:
        figures["eager_c1_p50_ms"] = p50_ms(timed(eager(feeds1), seconds))
        figures["runtime_c1_p50_ms"] = p50_ms(timed(lambda: session.run(names, feeds1, time.monotonic() + 30),
                                                    seconds))
        figures["eager_batched_rows_s"] = rows_per_s(timed(eager(feeds32), seconds), 32)
        figures["runtime_batched_rows_s"] = rows_per_s(
            timed(lambda: session.run(names, feeds32, time.monotonic() + 30), seconds), 32)
    finally:
        session.close()
    if onnx:
        import onnxruntime as ort

        path = tmp / f"{name}.onnx"
        tensors = tuple(torch.from_numpy(v) for v in feeds32.values())
        torch.onnx.export(model, tensors, str(path), dynamo=False, input_names=list(feeds1),
                          output_names=names, dynamic_axes={k: {0: "batch"} for k in [*feeds1, *names]})
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        ort_session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        figures["onnx_c1_p50_ms"] = p50_ms(timed(lambda: ort_session.run(names, feeds1), seconds))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    results = {}
    with tempfile.TemporaryDirectory(prefix="mp-bench-torch-") as tmp:
        cnn = models.SmallCNN().eval()
        results["cnn"] = bench_model(
            "cnn", cnn, "SmallCNN",
            {"x": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)},
            {"x": rng.standard_normal((32, 3, 32, 32)).astype(np.float32)},
            [{"name": "logits", "dtype": "float32", "shape": [None, 10]}], args.seconds, Path(tmp), onnx=True)
        gru = models.PackedGRU().eval()
        results["gru"] = bench_model(
            "gru", gru, "PackedGRU",
            {"tokens": rng.integers(0, 50, (1, 24)).astype(np.int64), "lengths": np.array([17], dtype=np.int64)},
            {"tokens": rng.integers(0, 50, (32, 24)).astype(np.int64),
             "lengths": rng.integers(1, 25, 32).astype(np.int64)},
            [{"name": "logits", "dtype": "float32", "shape": [None, 3]}], args.seconds, Path(tmp), onnx=False)
    for name, f in results.items():
        print(f"{name}: c=1 p50 eager {f['eager_c1_p50_ms']:.3f} ms, torch runtime {f['runtime_c1_p50_ms']:.3f} ms"
              + (f", onnxruntime {f['onnx_c1_p50_ms']:.3f} ms" if "onnx_c1_p50_ms" in f else ""))
        ratio = f["runtime_batched_rows_s"] / f["eager_batched_rows_s"]
        print(f"{name}: batched (32 rows/call) eager {f['eager_batched_rows_s']:.0f} rows/s, torch runtime "
              f"{f['runtime_batched_rows_s']:.0f} rows/s, ratio {ratio:.2f} (goal >= 0.8)")
        if "onnx_c1_p50_ms" in f:
            print(f"{name}: c=1 p50 torch runtime - onnxruntime = "
                  f"{f['runtime_c1_p50_ms'] - f['onnx_c1_p50_ms']:.3f} ms (goal <= 1 ms)")


if __name__ == "__main__":
    main()
