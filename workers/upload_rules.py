"""The one set of rules for what an upload may declare: tensor specs, output names, entrypoint.

Both the web tier (`modelport.registry.services`, at upload time, answering 400) and the
converter (`workers.convert`, before it runs anything) call these functions, so an upload the
worker would refuse is refused when it is sent. Django-free and torch-free: plain data in,
plain data out, `RuleError` naming the offending field otherwise.
"""

from __future__ import annotations

import keyword
from typing import Any

from workers.signature import SUPPORTED_DTYPES

# dtypes the converter can generate sample inputs for and export (numpy names, as in the API).
# onnxruntime serves more (uint16/32/64): an ONNX upload may declare those, a PyTorch one not.
CONVERTIBLE_DTYPES = frozenset({"float32", "float16", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"})
SERVABLE_DTYPES = SUPPORTED_DTYPES
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")
MAX_TENSORS = 64
MAX_RANK = 8
# A declared static shape must leave room for the generated samples the converter and the
# validator build from it (three sets of every input): at most this many elements per input.
MAX_SAMPLE_ELEMENTS = 64 * 1024 * 1024
_SPEC_KEYS = frozenset({"name", "dtype", "shape", "range"})


class RuleError(ValueError):
    """`field` is the upload field at fault (`inputs`, `outputs`, `entrypoint`, `source`,
    `artifact`); `message` says what is wrong and where (e.g. `inputs[0].dtype …`); `reason` is
    the short per-field note the API lists under `errors` (e.g. `required`, `inputs[0]`)."""

    def __init__(self, field: str, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.reason = reason or message


def check_input_specs(inputs: Any, *, dtypes: frozenset[str] = CONVERTIBLE_DTYPES) -> list[dict[str, Any]]:
    """`inputs` as declared (`[{"name", "dtype", "shape", "range"?}]`, null for a dynamic axis),
    checked and normalised to exactly those keys. `dtypes`: CONVERTIBLE_DTYPES for PyTorch
    uploads, SERVABLE_DTYPES for ONNX ones."""
    if not isinstance(inputs, list) or not 1 <= len(inputs) <= MAX_TENSORS:
        raise RuleError(
            "inputs", f"inputs must be a list of 1 to {MAX_TENSORS} tensors {{name, dtype, shape}}", "bad length"
        )
    specs: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, spec in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(spec, dict) or set(spec) - _SPEC_KEYS:
            raise RuleError(
                "inputs", f"{where} must be an object with name, dtype, shape (and optionally range)", where
            )
        name, dtype, shape = spec.get("name"), spec.get("dtype"), spec.get("shape")
        if not isinstance(name, str) or not name:
            raise RuleError("inputs", f"{where}.name must be a non-empty string", where)
        if name in seen:
            raise RuleError("inputs", f"{where}.name {name!r} is used twice; input names must be distinct", where)
        if dtype not in dtypes:
            raise RuleError("inputs", f"{where}.dtype {dtype!r} is not one of {sorted(dtypes)}", where)
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_RANK
            or any(d is not None and (not isinstance(d, int) or isinstance(d, bool) or d < 1) for d in shape)
        ):
            raise RuleError(
                "inputs", f"{where}.shape must be a list of at most {MAX_RANK} positive ints or null (dynamic)", where
            )
        static = 1
        for d in shape:
            static *= d or 1
        if static > MAX_SAMPLE_ELEMENTS:
            raise RuleError(
                "inputs",
                f"{where}.shape {shape} has {static:,} elements without its dynamic axes; at most "
                f"{MAX_SAMPLE_ELEMENTS:,} can be checked (declare large axes as null)",
                where,
            )
        clean: dict[str, Any] = {"name": name, "dtype": dtype, "shape": list(shape)}
        value_range = spec.get("range")
        if value_range is not None:
            if (
                not isinstance(value_range, list)
                or len(value_range) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value_range)
                or value_range[0] >= value_range[1]
            ):
                raise RuleError("inputs", f"{where}.range must be [low, high) integers with low < high", where)
            clean["range"] = list(value_range)
        seen.add(name)
        specs.append(clean)
    return specs


def check_output_names(outputs: Any, *, input_names: list[str]) -> list[str]:
    """Declared output names: a list of distinct non-empty strings, none of them an input's
    (an empty list declares nothing)."""
    if (
        not isinstance(outputs, list)
        or not all(isinstance(n, str) and n for n in outputs)
        or len(set(outputs)) != len(outputs)
    ):
        raise RuleError("outputs", "outputs must be a JSON array of distinct, non-empty names", "expected names")
    clash = sorted(set(outputs) & set(input_names))
    if clash:
        raise RuleError(
            "outputs", f"output names {clash} are also input names; a tensor name must be unique", "expected names"
        )
    return list(outputs)


def check_entrypoint(entrypoint: Any) -> str:
    """The name of the nn.Module subclass or factory function in the source file."""
    if not isinstance(entrypoint, str) or not entrypoint:
        raise RuleError(
            "entrypoint", "format state_dict needs an entrypoint (the class or function in source)", "required"
        )
    if not entrypoint.isidentifier() or keyword.iskeyword(entrypoint):
        raise RuleError("entrypoint", f"entrypoint {entrypoint!r} is not a Python name", "not a Python name")
    return entrypoint


def check_weights_name(filename: str) -> None:
    """state_dict weights must be safetensors or a torch.save pickle, by file name."""
    if not filename.lower().endswith(WEIGHT_SUFFIXES):
        raise RuleError(
            "artifact",
            f"state_dict weights must be {', '.join(WEIGHT_SUFFIXES)}, not {filename[-100:]!r}",
            "unsupported file type",
        )


def check_program_name(filename: str) -> None:
    """An exported program is the .pt2 archive `torch.export.save` writes."""
    if not filename.lower().endswith(".pt2"):
        raise RuleError(
            "artifact",
            f"an exported program is the .pt2 file torch.export.save writes, not {filename[-100:]!r}",
            "unsupported file type",
        )
