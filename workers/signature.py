"""Tensor signatures: names, numpy dtype names, shapes with None for dynamic axes.

Shared by validation, the serving runtime and the web tier's input checks. No torch import.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# onnxruntime's type strings -> numpy dtype names (the names the API speaks).
ORT_TO_NUMPY = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}
SUPPORTED_DTYPES = frozenset(ORT_TO_NUMPY.values())


def tensor_spec(name: str, ort_type: str, shape: list[Any]) -> dict[str, Any]:
    if ort_type not in ORT_TO_NUMPY:
        raise ValueError(f"tensor {name!r} has unsupported type {ort_type}")
    dims = [d if isinstance(d, int) and d >= 0 else None for d in shape]
    return {"name": name, "dtype": ORT_TO_NUMPY[ort_type], "shape": dims}


def sample_input(spec: dict[str, Any], *, dynamic_size: int, rng: np.random.Generator) -> np.ndarray:
    """A generated input for `spec`, dynamic axes set to `dynamic_size`. Integer inputs are kept
    small and non-negative so they are valid indices (e.g. token ids for an Embedding)."""
    shape = [d if d is not None else dynamic_size for d in spec["shape"]]
    dtype = np.dtype(spec["dtype"])
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if dtype.kind in "iu":
        return rng.integers(0, 10, size=shape).astype(dtype)
    return rng.standard_normal(size=shape).astype(dtype)
