"""ONNX files for validator tests: external data hidden in a Constant attribute or an If branch,
static dims too big to sample, and a plain MatMul of a chosen size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]


def _external(name: str, location: str) -> TensorProto:
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[4])
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    return tensor


def constant_with_external_data(path: Path, location: str = "../../etc/passwd") -> Path:
    """y = x + Constant, the constant's data in `location`."""
    const = helper.make_node("Constant", [], ["w"], value=_external("w", location))
    graph = helper.make_graph(
        [const, helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=OPSET), str(path))
    return path


def if_branch_with_external_data(path: Path, location: str = "../../etc/passwd") -> Path:
    """y = If(c): the then-branch returns an initializer whose data is in `location`."""

    def branch(name: str, init: TensorProto) -> onnx.GraphProto:
        out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [4])
        return helper.make_graph([helper.make_node("Identity", [init.name], [f"{name}_out"])], name, [], [out],
                                 initializer=[init])

    node = helper.make_node(
        "If", ["c"], ["y"],
        then_branch=branch("then", _external("secret", location)),
        else_branch=branch("else", helper.make_tensor("zeros", TensorProto.FLOAT, [4], [0.0] * 4)),
    )
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=OPSET), str(path))
    return path


def huge_static_input(path: Path) -> Path:
    """Relu over a static [100000, 100000, 100] float input (3.6 TiB per sample)."""
    shape = [100000, 100000, 100]
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    onnx.save(helper.make_model(graph, opset_imports=OPSET), str(path))
    return path


def matmul(path: Path, n: int) -> Path:
    """y = x @ w with a float32 [n, n] weight (n*n*4 bytes) and a dynamic batch axis."""
    weight = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=OPSET), str(path))
    return path
