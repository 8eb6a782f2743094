"""Small ONNX models built on the spot with onnx.helper (no torch, no downloads).

Used by `make run` to register a demo model, by tests and by bench/.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np


def mlp_onnx(path: Path, *, sizes: tuple[int, ...] = (784, 256, 10), seed: int = 0, opset: int = 17) -> Path:
    """An MLP (Gemm+Relu layers) with a dynamic batch axis: input `x` float32 [batch, sizes[0]],
    output `y` float32 [batch, sizes[-1]]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current = "x"
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(sizes) - 2
        gemm_out = "y" if last else f"h{i}"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [gemm_out]))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm_out], [f"r{i}"]))
            current = f"r{i}"
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", sizes[-1]])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="modelport-demo")
    model.ir_version = 9
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, str(path))
    return path
