"""Conversion job, run inside the sandbox by `workers.convert`: `python -I _convert_child.py JOB`.

Everything here may execute user code (the model source, TorchScript, unpickling), which is why it
only ever runs confined. It is a standalone script (no `workers` imports: the sandbox runs it with
`-I`), reads the job JSON and writes, in its cwd (the scratch dir):

- `model.onnx` (plus `model.onnx.data` only for models over ~1.9 GB, or the job's threshold) when
  conversion succeeds;
- `report.json`: `{"ok", "error_code", "error_message", "signature", "report"}`, always, unless the
  process is killed (the parent then reports the limit that killed it).

Job keys: fmt ("state_dict" | "torchscript"), artifact, source, source_name (the uploaded file's
own name, for messages), entrypoint, init_kwargs, inputs (`[{"name", "dtype", "shape", "range"?}]`),
output_names (list or null), threads, external_data_over_bytes (write tensors to `model.onnx.data`
when the model is bigger than this; default protobuf's ~1.9 GB limit).

Generated inputs: floats ~ N(0, 1); integers uniform in `range` = [low, high) if the input spec
gives one, else [0, min(100, smallest nn.Embedding size in the model)); bools uniform. Every dynamic
(null) axis k takes these sizes: export example 2 (k=0) / 3+2k (k>0), parity sizes 1 and 3 (k=0),
6+k and 22+k (k>0); the same axis index has the same size in every input (a batch axis is shared).
"""

import contextlib
import importlib.util
import inspect
import json
import math
import os
import re
import resource
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

# Set before torch is imported so the knobs apply from the start.
THREADS = int(os.environ.get("OMP_NUM_THREADS", "1"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

OPSET = 18
LATENCY_MIN_RUNS = 10
LATENCY_MAX_RUNS = 200
LATENCY_BUDGET_S = 1.0
SINGLE_FILE_MAX_BYTES = 1_900_000_000  # protobuf's 2 GiB limit, with room

TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "float64": torch.float64,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
NUMPY_NAMES = {v: k for k, v in TORCH_DTYPES.items()}
# (atol, rtol) by output dtype: pass if |onnx - torch| <= atol + rtol * |torch| everywhere.
TOLERANCES = {
    "float64": (1e-6, 1e-6),
    "float32": (1e-4, 1e-4),
    "float16": (1e-2, 1e-2),
    "bfloat16": (1e-2, 1e-2),
}


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
SOURCE_NAME = "the source file"  # the uploaded file's own name once the job is read


class JobError(Exception):
    """A terminal conversion failure with a code and a message the user can act on."""

    def __init__(self, code: str, message: str, report: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.report = report or {}


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _user_frame(exc: BaseException, filename: str) -> str:
    """' (line N of the source)' if the traceback passes through the user's source file."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == filename:
            line = frame.lineno
    if isinstance(exc, SyntaxError) and exc.filename == filename:
        line = exc.lineno
    return f" (line {line} of the source)" if line else ""


def describe_syntax_error(exc: SyntaxError) -> str:
    """`net.py, line 7: invalid syntax` and the offending line with a caret under the spot."""
    kind = "indentation error" if isinstance(exc, IndentationError) else "syntax error"
    head = f"{SOURCE_NAME} has a {kind} at line {exc.lineno}: {exc.msg}"
    text = (exc.text or "").rstrip("\n")
    if not text.strip():
        return head
    stripped = text.lstrip()
    caret = max((exc.offset or 1) - 1 - (len(text) - len(stripped)), 0)
    return f"{head}\n    {stripped[:300]}\n    {' ' * min(caret, 300)}^"


def _resource_error(exc: BaseException) -> JobError | None:
    """Map resource exhaustion inside user code to the limit codes the parent also uses."""
    text = str(exc)
    if isinstance(exc, MemoryError) or "can't allocate memory" in text or "bad_alloc" in text:
        return JobError("memory_limit", f"memory limit exceeded ({_describe(exc)[:300]})")
    if isinstance(exc, OSError) and exc.errno == 27:  # EFBIG: RLIMIT_FSIZE
        return JobError("file_size_limit", f"file size limit exceeded ({_describe(exc)[:300]})")
    if (
        isinstance(exc, BlockingIOError)
        and exc.errno == 11
        and "fork" in "".join(traceback.format_tb(exc.__traceback__))
    ):
        return JobError("process_limit", f"process limit exceeded ({_describe(exc)[:300]})")
    return None


def _wrap_user_error(code: str, prefix: str, exc: BaseException, filename: str | None = None) -> JobError:
    mapped = _resource_error(exc)
    if mapped is not None:
        return mapped
    where = _user_frame(exc, filename) if filename else ""
    return JobError(code, f"{prefix}: {_describe(exc)[:2000]}{where}")


# ---------------------------------------------------------------------------------------------
# loading


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Weights as a flat {name: tensor}. Pickles only through `weights_only=True`; any failure is
    final (a fallback to full unpickling is exactly what a malicious file would aim for)."""
    obj: Any
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        mapped = _resource_error(exc)
        if mapped is not None:
            raise mapped from None
        if path.suffix != ".safetensors" and _pickles_a_module(path):
            raise JobError("weights_rejected", f"weights file rejected: {PICKLED_MODULE_ADVICE}") from None
        raise JobError("weights_rejected", f"weights file rejected: {_weights_error_reason(exc)}") from None
    if isinstance(obj, dict) and not _is_tensor_dict(obj):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict) and _is_tensor_dict(obj[key]):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not _is_tensor_dict(obj):
        raise JobError(
            "weights_rejected",
            "weights file rejected: expected a mapping of parameter names to tensors "
            f"(a state_dict), got {type(obj).__name__}",
        )
    return obj


PICKLED_MODULE_ADVICE = (
    "this file pickles a whole module; save `model.state_dict()` instead "
    "(torch.save(model.state_dict(), 'weights.pt')) and upload it with format=state_dict, the source and "
    "the entrypoint"
)
STATE_DICT_NOT_TORCHSCRIPT = (
    "this is a state_dict, not a TorchScript archive; use format=state_dict (with the model's source file "
    "and entrypoint), or upload torch.jit.save(torch.jit.script(model)) as torchscript"
)
MODULE_NOT_TORCHSCRIPT = (
    "this file pickles a whole module (torch.save(model)), not a TorchScript archive; upload "
    "torch.jit.save(torch.jit.script(model)) as torchscript, or save `model.state_dict()` and use format=state_dict"
)


def _pickle_bytes(path: Path) -> bytes | None:
    """The pickle of a torch.save file: `<archive>/data.pkl` of the zip format, else the file."""
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
                if not names or archive.getinfo(names[0]).file_size > 64 * 2**20:
                    return None
                return archive.read(names[0])
        with open(path, "rb") as raw:
            return raw.read(64 * 2**20)
    except (OSError, zipfile.BadZipFile, KeyError):
        return None


def _pickles_a_module(path: Path) -> bool:
    """True if the pickle builds an nn.Module (torch.save(model)): read with pickletools, which
    lists opcodes and never executes anything. A module's state carries `_parameters` and
    `_modules`, or its class comes from torch.nn.modules."""
    import pickletools

    data = _pickle_bytes(path)
    if data is None:
        return False
    strings: set[str] = set()
    # A truncated or odd pickle is read as far as it goes.
    with contextlib.suppress(ValueError, EOFError, UnicodeDecodeError):
        for opcode, arg, _ in pickletools.genops(data):
            if isinstance(arg, str):
                strings.add(arg)
            if opcode.name == "STOP":
                break
    return {"_parameters", "_modules"} <= strings or any(s.startswith("torch.nn.modules") for s in strings)


_TORCH_LOAD_ADVICE = ("Weights only load failed", "Check the documentation", "Please file an issue")


def _weights_error_reason(exc: BaseException) -> str:
    """The reason from torch.load's message, without its advice on loading unsafely or
    allowlisting globals (neither is something an uploader can or should do here)."""
    text = _ANSI.sub("", str(exc))
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    kept = [p for p in paragraphs if not p.startswith(_TORCH_LOAD_ADVICE)]
    if not kept:
        return _describe(exc)[:1000]
    reason = " ".join(kept).split(" Please use `torch.serialization", 1)[0]
    return reason[:1000]


def _is_tensor_dict(obj: dict[Any, Any]) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def build_module(source: Path, entrypoint: str, init_kwargs: dict[str, Any]) -> torch.nn.Module:
    """Import the user's source file and build the model from `entrypoint`: an nn.Module subclass
    or a function returning a module, called with `init_kwargs`."""
    filename = str(source)
    spec = importlib.util.spec_from_file_location("user_model", filename)
    if spec is None or spec.loader is None:
        raise JobError("source_error", "the source file can't be imported (is it a .py file?)")
    module = importlib.util.module_from_spec(spec)
    sys.modules["user_model"] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        if exc.filename != filename:
            raise _wrap_user_error("source_error", "the source file failed to import", exc, filename) from None
        raise JobError("source_error", describe_syntax_error(exc)) from None
    except BaseException as exc:
        raise _wrap_user_error("source_error", "the source file failed to import", exc, filename) from None
    target = getattr(module, entrypoint, None)
    if target is None:
        candidates = sorted(
            name
            for name, value in vars(module).items()
            if not name.startswith("_")
            and getattr(value, "__module__", None) == "user_model"
            and (inspect.isfunction(value) or (inspect.isclass(value) and issubclass(value, torch.nn.Module)))
        )
        raise JobError(
            "entrypoint_not_found",
            f"entrypoint {entrypoint!r} is not defined in the source file"
            + (f"; it defines: {', '.join(candidates)}" if candidates else ""),
        )
    if not callable(target):
        raise JobError("entrypoint_invalid", f"entrypoint {entrypoint!r} is not a class or function")
    try:
        model = target(**init_kwargs)
    except BaseException as exc:
        raise _wrap_user_error(
            "entrypoint_failed", f"calling {entrypoint}(**init_kwargs) failed", exc, filename
        ) from None
    if not isinstance(model, torch.nn.Module):
        raise JobError(
            "entrypoint_invalid",
            f"entrypoint {entrypoint!r} returned {type(model).__name__}, not a torch.nn.Module",
        )
    return model


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


DATA_PARALLEL_PREFIX = "module."


def strip_data_parallel_prefix(
    model: torch.nn.Module, state_dict: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], bool]:
    """Weights saved from nn.DataParallel/DistributedDataParallel have every key prefixed with
    `module.`; load them with the prefix stripped when the model's own keys have none."""
    expected = model.state_dict()
    if (
        state_dict
        and all(k.startswith(DATA_PARALLEL_PREFIX) for k in state_dict)
        and not any(k.startswith(DATA_PARALLEL_PREFIX) for k in expected)
    ):
        return {k[len(DATA_PARALLEL_PREFIX) :]: v for k, v in state_dict.items()}, True
    return state_dict, False


def check_state_dict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Compare names and shapes before loading so that every problem is listed at once."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [k for k in expected if k in state_dict and _shape(expected[k]) != _shape(state_dict[k])]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(
                "missing keys (in the model, not in the weights file): "
                + ", ".join(f"{k} {_shape(expected[k])}" for k in missing)
            )
        if unexpected:
            parts.append(
                "unexpected keys (in the weights file, not in the model): "
                + ", ".join(f"{k} {_shape(state_dict[k])}" for k in unexpected)
            )
        if mismatched:
            parts.append(
                "shape mismatch: "
                + ", ".join(f"{k} expected {_shape(expected[k])}, got {_shape(state_dict[k])}" for k in mismatched)
            )
        raise JobError("state_dict_mismatch", "state_dict does not match the model: " + "; ".join(parts))
    try:
        model.load_state_dict(state_dict, strict=True)
    except Exception as exc:
        raise _wrap_user_error("state_dict_mismatch", "load_state_dict failed", exc) from None


def load_torchscript(path: Path) -> torch.nn.Module:
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        advice = _not_torchscript_advice(path)
        if advice is not None:
            raise JobError("torchscript_rejected", f"TorchScript archive rejected: {advice}") from None
        raise _wrap_user_error("torchscript_rejected", "TorchScript archive rejected", exc) from None


def load_exported_program(path: Path) -> Any:
    """A `torch.export.save` archive (code: only ever loaded in the sandbox)."""
    try:
        return torch.export.load(str(path))
    except Exception as exc:
        raise _wrap_user_error("exported_program_rejected", "exported program rejected", exc) from None


def program_specs(program: Any) -> list[dict[str, Any]]:
    """The program's user inputs as specs: name, dtype, shape (None for a symbolic dim), and
    `bounds` {axis: [low, high]} from its range constraints (high None when unbounded)."""
    by_name = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    specs = []
    for input_spec in program.graph_signature.input_specs:
        if input_spec.kind.name != "USER_INPUT":
            continue
        name = input_spec.arg.name
        value = by_name[name].meta.get("val")
        if not isinstance(value, torch.Tensor) or value.dtype not in NUMPY_NAMES:
            raise JobError("invalid_inputs", f"input {name!r} of the exported program is not a supported tensor")
        shape: list[int | None] = []
        bounds: dict[str, list[int | None]] = {}
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, torch.SymInt):
                shape.append(None)
                limits = program.range_constraints.get(dim.node.expr)
                low = int(limits.lower) if limits is not None else 1
                upper = limits.upper if limits is not None else None
                high = int(upper) if upper is not None and upper.is_finite else None
                bounds[str(axis)] = [max(1, low), high]
            else:
                shape.append(int(dim))
        specs.append({"name": name, "dtype": NUMPY_NAMES[value.dtype], "shape": shape, "bounds": bounds})
    if not specs:
        raise JobError("invalid_inputs", "the exported program takes no tensor inputs")
    return specs


def program_inputs(program: Any, declared: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The program's input specs; declared `inputs` (optional) must name the same inputs with the
    same dtypes, and may give integer inputs a `range` for generated values."""
    specs = program_specs(program)
    if not declared:
        return specs
    got = [(s["name"], s["dtype"]) for s in specs]
    want = [(s["name"], s["dtype"]) for s in declared]
    if got != want:
        raise JobError("signature_mismatch", f"declared inputs {want} but the exported program takes {got}")
    for spec, given in zip(specs, declared, strict=True):
        if "range" in given:
            spec["range"] = given["range"]
    return specs


def _not_torchscript_advice(path: Path) -> str | None:
    """What a torch.save file sent as torchscript is, when it is one of the usual mistakes.
    Only ever unpickles with weights_only=True."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:  # not a plain weights file; maybe a pickled module
        return MODULE_NOT_TORCHSCRIPT if _pickles_a_module(path) else None
    if (
        isinstance(obj, dict)
        and obj
        and (_is_tensor_dict(obj) or any(isinstance(obj.get(k), dict) for k in ("state_dict", "model_state_dict")))
    ):
        return STATE_DICT_NOT_TORCHSCRIPT
    return None


# ---------------------------------------------------------------------------------------------
# inputs and outputs


def _embedding_sizes(model: torch.nn.Module) -> list[int]:
    sizes = []
    for module in model.modules():
        is_embedding = isinstance(module, torch.nn.Embedding) or getattr(module, "original_name", None) == "Embedding"
        weight = getattr(module, "weight", None)
        if is_embedding and isinstance(weight, torch.Tensor) and weight.dim() == 2:
            sizes.append(int(weight.shape[0]))
    return sizes


def axis_size(axis: int, which: str) -> int:
    """Size of dynamic axis `axis` in the export example ("export") or a parity set ("small",
    "large"). Sizes are >= 2 and distinct per axis for export (see FINDINGS: size-1 dims get
    specialized), and differ between sets so a baked-in size shows up."""
    if which == "export":
        return 2 if axis == 0 else 3 + 2 * axis
    if which == "small":
        return 1 if axis == 0 else 6 + axis
    return 3 if axis == 0 else 22 + axis


# Parity input sets beyond the three size sets: (name, size set, values). A branch or loop on the
# input's values that an exporter traced down one path shows up as a mismatch on one of these.
VALUE_SETS = (
    ("positive", "small", "positive"),
    ("negative", "large", "negative"),
    ("zeros", "export", "zeros"),
    ("large_magnitude", "small", "large"),
    ("edges_low", "large", "low"),
    ("edges_high", "small", "high"),
)


def _bounded(size: int, spec: dict[str, Any], axis: int) -> int:
    """`size` moved into the axis's bounds (an exported program's range constraints)."""
    low, high = (spec.get("bounds") or {}).get(str(axis), [1, None])
    size = max(size, low)
    return min(size, high) if high is not None else size


def make_inputs(
    specs: list[dict[str, Any]], which: str, default_int_high: int, seed: int, values: str = "normal"
) -> list[torch.Tensor]:
    """Inputs at the `which` sizes. `values`: "normal" (floats ~ N(0, 1), ints uniform in their
    range, bools uniform), "positive"/"negative" (floats |N(0, 1)| + 0.1, with that sign),
    "zeros", "large" (floats ~ 1000·N(0, 1)), "low"/"high" (floats ∓(1000 + |N|·1000), ints and
    bools at the low or high edge of their range)."""
    gen = torch.Generator().manual_seed(seed)
    tensors = []
    for spec in specs:
        shape = [d if d is not None else _bounded(axis_size(i, which), spec, i) for i, d in enumerate(spec["shape"])]
        dtype = TORCH_DTYPES[spec["dtype"]]
        if dtype == torch.bool:
            t = torch.randint(0, 2, shape, generator=gen).bool()
            if values in ("zeros", "low", "high"):
                t = torch.full(shape, values == "high", dtype=torch.bool)
        elif dtype.is_floating_point:
            t = torch.randn(shape, generator=gen, dtype=torch.float32)
            scale = 100.0 if dtype in (torch.float16, torch.bfloat16) else 1000.0
            if values == "positive":
                t = t.abs() + 0.1
            elif values == "negative":
                t = -(t.abs() + 0.1)
            elif values == "zeros":
                t = torch.zeros(shape)
            elif values == "large":
                t = t * scale
            elif values in ("low", "high"):
                t = (scale + t.abs() * scale) * (1 if values == "high" else -1)
            t = t.to(dtype)
        else:
            low, high = spec.get("range") or (0, default_int_high)
            t = torch.randint(int(low), int(high), shape, generator=gen, dtype=torch.int64)
            if values in ("zeros", "low"):
                t = torch.full(shape, int(low), dtype=torch.int64)
            elif values == "high":
                t = torch.full(shape, int(high) - 1, dtype=torch.int64)
            t = t.to(dtype)
        tensors.append(t)
    return tensors


def flatten_outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        flat = []
        for item in out:
            flat.extend(flatten_outputs(item))
        return flat
    if isinstance(out, dict):
        flat = []
        for item in out.values():
            flat.extend(flatten_outputs(item))
        return flat
    raise JobError("model_error", f"the model returned {type(out).__name__}; outputs must be tensors")


def run_eager(model: torch.nn.Module, inputs: list[torch.Tensor], which: str) -> list[torch.Tensor]:
    try:
        with torch.no_grad():
            out = model(*inputs)
    except JobError:
        raise
    except BaseException as exc:
        shapes = ", ".join(str(list(t.shape)) for t in inputs)
        raise _wrap_user_error(
            "model_error",
            f"the model failed on generated inputs of shape {shapes} ({which} sizes; set fixed "
            'sizes or an int input\'s "range" if these are invalid for it)',
            exc,
        ) from None
    return [t.detach().cpu().contiguous() for t in flatten_outputs(out)]


def output_axes(runs: list[list[torch.Tensor]]) -> list[list[int | None]]:
    """Per output: list of dims, None where the size changed between input size sets."""
    dims = []
    for i in range(len(runs[0])):
        shapes = [list(run[i].shape) for run in runs]
        if any(len(s) != len(shapes[0]) for s in shapes):
            raise JobError("model_error", f"output {i} changes rank with the input sizes")
        dims.append(
            [shapes[0][k] if all(s[k] == shapes[0][k] for s in shapes) else None for k in range(len(shapes[0]))]
        )
    return dims


def _np(t: torch.Tensor) -> np.ndarray:
    return t.numpy() if t.dtype != torch.bfloat16 else t.float().numpy()


# ---------------------------------------------------------------------------------------------
# export and parity


def _dim_name(tensor_name: str, axis: int, size_for_batch: bool) -> str:
    return "batch" if axis == 0 and size_for_batch else f"{tensor_name}_dim_{axis}"


def dynamic_axes_for(
    specs: list[dict[str, Any]], output_names: list[str], out_dims: list[list[int | None]]
) -> dict[str, dict[int, str]]:
    axes = {}
    for spec in specs:
        named = {i: _dim_name(spec["name"], i, True) for i, d in enumerate(spec["shape"]) if d is None}
        if named:
            axes[spec["name"]] = named
    batch_dynamic = any(spec["shape"] and spec["shape"][0] is None for spec in specs)
    for name, dims in zip(output_names, out_dims, strict=True):
        named = {i: _dim_name(name, i, batch_dynamic) for i, d in enumerate(dims) if d is None}
        if named:
            axes[name] = named
    return axes


def _first_lines(text: str, limit: int = 1500) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + " […]"


def explain_export_error(exc: BaseException) -> str:
    """A short reason naming the operator or construct that failed, when one can be found."""
    text = _ANSI.sub("", "".join(traceback.format_exception_only(type(exc), exc)) + str(exc.__cause__ or ""))
    ops = []
    for pattern in (
        r"Exporting the operator '([\w:.]+)'",
        r"unrecognized namespace ([\w:.]+)",
        r"OpOverload\(op='([\w:.]+)'",
        r"[Uu]nsupported (?:FX )?nodes?[^\n]*?\b((?:aten|prim)[.:]{1,2}[\w.]+)",
        r"\b(aten::\w+|prim::\w+)",
        r"\b(aten\.\w+(?:\.\w+)?)",
    ):
        for match in re.finditer(pattern, text):
            op = match.group(1).rstrip(".")
            if op not in ops:
                ops.append(op)
    summary = _describe(exc)
    # The dynamo exporter wraps the cause in pages of advice; its summary has the real reason.
    if "## Exception summary" in text:
        causes = re.findall(r"<class '[\w.]*?(\w+)'>: (.*)", text.split("## Exception summary", 1)[1])
        if causes:
            summary = "; ".join(f"{name}: {msg.strip()}" for name, msg in causes)
    prefix = f"unsupported operator {', '.join(ops[:5])}: " if ops else ""
    return prefix + _first_lines(_ANSI.sub("", summary), 800)


# The legacy tracer's warnings that it recorded a value-dependent decision as a constant: a
# Python bool/int/float taken from a tensor (an `if` on values, a loop bound) or a loop over a
# tensor. Such a graph answers inputs that would take another path wrongly, so it is refused
# whatever parity says (its sample inputs may all take the traced path).
_SPECIALISING = re.compile(
    r"Converting a tensor to a Python (?:boolean|number|index|integer|float)|Iterating over a tensor"
)


class NotFaithful(Exception):
    """The exporter specialised the graph on the example's values."""


def _specialisation(caught: list[warnings.WarningMessage]) -> str | None:
    for w in caught:
        text = str(w.message)
        if _SPECIALISING.search(text):
            where = f" ({Path(w.filename).name}, line {w.lineno})" if w.filename else ""
            return text.split(". ")[0].strip() + where
    return None


def export_advice(reasons: str) -> str:
    """One sentence on what to change, chosen from what the exporters said."""
    ops = re.findall(r"unsupported operator ([^:]+):", reasons)
    if ops:
        return (
            f"The model could not be exported to ONNX because it uses {ops[0].strip()}, which has no ONNX "
            "form: compute that part with standard torch operations, or outside the model."
        )
    if re.search(r"data.dependent|GuardOnDataDependent|\.item\(\)|tolist|Could not guard", reasons):
        return (
            "The model could not be exported to ONNX because forward() depends on tensor values: replace "
            "Python if/for/.item() on tensors with torch.where or fixed shapes."
        )
    return (
        "The model could not be exported to ONNX: make forward() use only torch operations on its tensor "
        "inputs (no numpy, files or Python-side state), or upload a torch.jit.trace archive as torchscript."
    )


def export(
    model: torch.nn.Module,
    exporter: str,
    inputs: list[torch.Tensor],
    input_names: list[str],
    output_names: list[str],
    axes: dict[str, dict[int, str]],
    path: Path,
    program: Any = None,
) -> None:
    """Export with one exporter; raises whatever the exporter raises, and `NotFaithful` when the
    legacy tracer warns that it specialised on the example's values."""
    kwargs: dict[str, Any] = dict(
        input_names=input_names,
        output_names=output_names,
        dynamic_axes=axes or None,
        opset_version=OPSET,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if exporter == "program":
            kwargs.pop("dynamic_axes")
            torch.onnx.export(program, tuple(inputs), str(path), dynamo=True, report=False, verbose=False, **kwargs)
        elif exporter == "dynamo":
            torch.onnx.export(model, tuple(inputs), str(path), dynamo=True, report=False, verbose=False, **kwargs)
        else:
            torch.onnx.export(model, tuple(inputs), str(path), dynamo=False, **kwargs)
    reason = _specialisation(caught)
    if reason is not None:
        raise NotFaithful(reason)


def available_exporters(model: torch.nn.Module, fmt: str = "") -> tuple[list[str], dict[str, str]]:
    if fmt == "exported_program":
        # The program itself goes to the dynamo exporter: its dynamic dims are its own.
        return ["program"], {}
    if isinstance(model, torch.jit.ScriptModule):
        # The dynamo exporter can't take a ScriptModule with dynamic axes (see FINDINGS).
        return ["legacy"], {}
    try:
        import onnxscript  # noqa: F401 - the dynamo exporter needs it
    except ImportError:
        return ["legacy"], {"dynamo": "not available: the onnxscript package is not installed"}
    return ["dynamo", "legacy"], {}


def make_session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare(
    onnx_outs: list[Any], torch_outs: list[torch.Tensor], output_names: list[str], which: str
) -> tuple[float, float, str | None]:
    """(max_abs, max_rel, failure message or None) for one input size set.

    max_rel is normwise: max |onnx - torch| / max |torch| per output (elementwise relative error
    explodes near zero and says little); the pass/fail test is elementwise atol + rtol * |torch|.
    """
    max_abs = 0.0
    max_rel = 0.0
    failure = None
    for name, got, want_t in zip(output_names, onnx_outs, torch_outs, strict=True):
        want = _np(want_t)
        got = np.asarray(got)
        if list(got.shape) != list(want.shape):
            return (
                math.inf,
                math.inf,
                (
                    f"output {name!r} has shape {list(got.shape)} in ONNX but {list(want.shape)} in "
                    f"PyTorch at the {which} input sizes (a size was baked into the graph)"
                ),
            )
        dtype = NUMPY_NAMES.get(want_t.dtype, str(want_t.dtype).replace("torch.", ""))
        g = got.astype(np.float64)
        w = want.astype(np.float64)
        both_nan = np.isnan(g) & np.isnan(w)
        diff = np.where(both_nan, 0.0, np.abs(g - w))
        diff = np.where(np.isnan(diff), np.inf, diff)
        abs_err = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(np.where(np.isnan(w), 0.0, w)).max()) if w.size else 0.0
        rel_err = abs_err / scale if scale > 0 else (0.0 if abs_err == 0 else math.inf)
        max_abs = max(max_abs, abs_err)
        max_rel = max(max_rel, rel_err)
        atol, rtol = TOLERANCES.get(dtype, (0.0, 0.0))
        if failure is None and diff.size and bool((diff > atol + rtol * np.abs(w)).any()):
            failure = (
                f"output {name!r} differs from PyTorch by up to {abs_err:.3g} (relative {rel_err:.3g}) at the "
                f"{which} input sizes; tolerance for {dtype} is {atol:g} + {rtol:g}·|value|"
            )
    return max_abs, max_rel, failure


def parity(
    path: Path,
    input_names: list[str],
    output_names: list[str],
    sets: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]],
) -> tuple[float, float, str | None]:
    """Run the exported model on every input size set; returns (max_abs, max_rel, failure)."""
    session = make_session(path)
    max_abs = 0.0
    max_rel = 0.0
    for which, (inputs, torch_outs) in sets.items():
        feed = {name: _np(t) for name, t in zip(input_names, inputs, strict=True)}
        try:
            onnx_outs = session.run(output_names, feed)
        except Exception as exc:
            shapes = ", ".join(str(list(t.shape)) for t in inputs)
            return (
                math.inf,
                math.inf,
                f"onnxruntime failed at the {which} input sizes ({shapes}): {_first_lines(str(exc), 600)}",
            )
        a, r, failure = compare(onnx_outs, torch_outs, output_names, which)
        max_abs = max(max_abs, a)
        max_rel = max(max_rel, r)
        if failure:
            return max_abs, max_rel, failure
    return max_abs, max_rel, None


def measure(path: Path, input_names: list[str], inputs: list[torch.Tensor]) -> float:
    """Latency p50 in ms of onnxruntime runs on the export example (onnxruntime's own time).

    No memory figure here: torch's freed memory gets reused in this process, so an RSS delta
    would under-count; the validator measures the served session's peak in a fresh process."""
    feed = {name: _np(t) for name, t in zip(input_names, inputs, strict=True)}
    session = make_session(path)
    for _ in range(3):
        session.run(None, feed)
    timings: list[float] = []
    deadline = time.perf_counter() + LATENCY_BUDGET_S
    while len(timings) < LATENCY_MAX_RUNS and (len(timings) < LATENCY_MIN_RUNS or time.perf_counter() < deadline):
        start = time.perf_counter()
        session.run(None, feed)
        timings.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(timings))


def _torch_runtime_report(model: torch.nn.Module, inputs: list[torch.Tensor], started: float) -> dict[str, Any]:
    """What the torch runtime's report holds: eager latency on the export example (the runtime's
    own time, in this process; a call adds the sandboxed process's round trip)."""
    with torch.no_grad():
        for _ in range(2):
            model(*inputs)
        timings: list[float] = []
        deadline = time.perf_counter() + LATENCY_BUDGET_S
        while len(timings) < LATENCY_MAX_RUNS and (
            len(timings) < LATENCY_MIN_RUNS or time.perf_counter() < deadline
        ):
            t0 = time.perf_counter()
            model(*inputs)
            timings.append((time.perf_counter() - t0) * 1000.0)
    return {
        "torch_latency_ms_p50": round(float(np.median(timings)), 4),
        "conversion_seconds": round(time.monotonic() - started, 2),
    }


def finalize_onnx(candidate: Path, final: Path, external_over: int = SINGLE_FILE_MAX_BYTES) -> int | None:
    """Write the accepted export with standard-domain opset imports only: as one file, or, when
    the model is over `external_over` bytes (protobuf's limit by default; the job may set it
    lower), with its tensors over 1 KiB (or over the threshold, if lower) in `<final>.data` beside it."""
    import onnx

    model = onnx.load(str(candidate))
    used = {node.domain for node in model.graph.node}
    keep = [op for op in model.opset_import if op.domain in ("", "ai.onnx") or op.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    if model.ByteSize() > external_over:
        onnx.save(
            model,
            str(final),
            save_as_external_data=True,
            location=final.name + ".data",
            size_threshold=min(1024, external_over),
        )
    else:
        onnx.save(model, str(final))
    opsets = {op.domain or "ai.onnx": op.version for op in model.opset_import}
    return opsets.get("ai.onnx")


# ---------------------------------------------------------------------------------------------
# the job


def convert(job: dict[str, Any], scratch: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    started = time.monotonic()
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    specs = job["inputs"]
    program = None
    fmt = job["fmt"]
    artifact = scratch / job["artifact"]
    stripped = False
    global SOURCE_NAME
    SOURCE_NAME = job.get("source_name") or SOURCE_NAME
    if fmt == "state_dict":
        state_dict = load_state_dict_file(artifact)
        model = build_module(scratch / job["source"], job["entrypoint"], job.get("init_kwargs") or {})
        state_dict, stripped = strip_data_parallel_prefix(model, state_dict)
        check_state_dict(model, state_dict)
        del state_dict
    elif fmt == "torchscript":
        model = load_torchscript(artifact)
    elif fmt == "exported_program":
        program = load_exported_program(artifact)
        specs = program_inputs(program, specs)
        model = program.module()
    else:
        raise JobError("invalid_format", f"unknown format {fmt!r}")
    if fmt != "exported_program":  # an exported program's module is already in inference form
        model.eval()
    param_count = int(sum(p.numel() for p in model.parameters()))

    embeddings = _embedding_sizes(model)
    default_high = max(1, min([100, *embeddings]))
    sets = {}
    for seed, which in enumerate(("export", "small", "large")):
        inputs = make_inputs(specs, which, default_high, seed)
        sets[which] = (inputs, run_eager(model, inputs, which))
    skipped: dict[str, str] = {}
    # The value sets only serve parity: a model served as it is (runtime "torch") is run on the
    # size sets alone (for its output signature and timing).
    value_sets = VALUE_SETS if job.get("runtime") != "torch" else ()
    for seed, (name, which, values) in enumerate(value_sets, start=3):
        inputs = make_inputs(specs, which, default_high, seed, values)
        try:
            sets[name] = (inputs, run_eager(model, inputs, name))
        except JobError as exc:  # e.g. an index input at its edge: the set can't be compared
            skipped[name] = exc.message[:300]
    n_outputs = len(sets["export"][1])
    output_names = job.get("output_names") or (
        ["output"] if n_outputs == 1 else [f"output_{i}" for i in range(n_outputs)]
    )
    if len(output_names) != n_outputs:
        raise JobError(
            "outputs_mismatch",
            f"{len(output_names)} output names were given but the model returns {n_outputs} tensors",
        )
    if any(len(outs) != n_outputs for _, outs in sets.values()):
        raise JobError("model_error", "the model returns a different number of tensors for different inputs")
    out_dims = output_axes([outs for _, outs in sets.values()])
    input_names = [s["name"] for s in specs]
    signature = {
        "inputs": [{"name": s["name"], "dtype": s["dtype"], "shape": list(s["shape"])} for s in specs],
        "outputs": [
            {"name": name, "dtype": NUMPY_NAMES.get(t.dtype, "float32"), "shape": dims}
            for name, t, dims in zip(output_names, sets["export"][1], out_dims, strict=True)
        ],
    }
    base_report: dict[str, Any] = {
        "parameter_count": param_count,
        "torch_version": torch.__version__,
        "parity_input_sets": sorted(sets),
    }
    if skipped:
        base_report["parity_sets_skipped"] = skipped
    if stripped:
        base_report["state_dict_prefix_stripped"] = DATA_PARALLEL_PREFIX
    if job.get("runtime") == "torch":
        return signature, {**base_report, **_torch_runtime_report(model, sets["export"][0], started)}

    axes = dynamic_axes_for(specs, output_names, out_dims)
    exporters, unavailable = available_exporters(model, fmt)
    attempts: list[dict[str, Any]] = [{"exporter": name, "error": why} for name, why in unavailable.items()]
    chosen: tuple[str, Path, float, float] | None = None
    best: tuple[float, float, str] | None = None  # the closest parity failure
    unfaithful: str | None = None
    for exporter in exporters:
        candidate = scratch / f"candidate-{exporter}.onnx"
        try:
            export(model, exporter, sets["export"][0], input_names, output_names, axes, candidate, program=program)
        except NotFaithful as exc:
            attempts.append({"exporter": exporter, "error": f"not faithful: {exc}"})
            unfaithful = unfaithful or f"{exporter} exporter: {exc}"
            continue
        except BaseException as exc:
            mapped = _resource_error(exc)
            if mapped is not None:
                raise mapped from None
            attempts.append({"exporter": exporter, "error": explain_export_error(exc)})
            continue
        # The headline error is over the size sets (inputs ~ N(0, 1)); the value sets (large
        # magnitudes among them) must pass the same elementwise tolerance, and their relative
        # error is reported on its own.
        size_sets = {k: v for k, v in sets.items() if k in ("export", "small", "large")}
        value_sets = {k: v for k, v in sets.items() if k not in size_sets}
        max_abs, max_rel, failure = parity(candidate, input_names, output_names, size_sets)
        if failure is None and value_sets:
            _, value_rel, failure = parity(candidate, input_names, output_names, value_sets)
            base_report["parity_value_sets_max_rel_error"] = value_rel
        if failure is None:
            chosen = (exporter, candidate, max_abs, max_rel)
            attempts.append({"exporter": exporter, "error": None, "parity_max_abs_error": max_abs})
            break
        attempts.append({"exporter": exporter, "error": f"parity: {failure}"})
        if best is None or max_abs < best[0]:
            best = (max_abs, max_rel, f"{exporter} exporter: {failure}")
    if chosen is None:
        # What the torch runtime needs to serve the model as it is (runtime "auto").
        report: dict[str, Any] = {
            **base_report,
            "export_attempts": attempts,
            "torch_signature": signature,
            **_torch_runtime_report(model, sets["export"][0], started),
        }
        if best is not None:
            raise JobError("parity", f"the converted model does not match the original: {best[2]}", report)
        if unfaithful is not None:
            raise JobError(
                "not_faithful",
                "the ONNX export specialised on the example's values, so it would answer other inputs "
                f"wrongly (value-dependent control flow): {unfaithful}",
                report,
            )
        reasons = "; ".join(f"{a['exporter']}: {a['error']}" for a in attempts)
        raise JobError("export_failed", f"{export_advice(reasons)} What the exporters said: {reasons}", report)

    exporter, candidate, max_abs, max_rel = chosen
    final = scratch / "model.onnx"
    opset = finalize_onnx(candidate, final, int(job.get("external_data_over_bytes") or SINGLE_FILE_MAX_BYTES))
    for path in scratch.glob("candidate-*"):
        path.unlink()
    latency = measure(final, input_names, sets["export"][0])
    report = {
        **base_report,
        "runtime": "onnx",
        "parity_max_abs_error": max_abs,
        "parity_max_rel_error": max_rel,
        "parity_input_shapes": {
            which: {name: list(t.shape) for name, t in zip(input_names, inputs, strict=True)}
            for which, (inputs, _) in sets.items()
        },
        "latency_ms_p50": round(latency, 4),
        "conversion_peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "opset": opset,
        "exporter": exporter,
        "export_attempts": attempts,
        "conversion_seconds": round(time.monotonic() - started, 2),
    }
    return signature, report


def _finite(obj: Any) -> Any:
    """JSON has no inf/nan: such numbers become strings ("inf")."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    scratch = Path.cwd()
    out: dict[str, Any] = {"ok": False, "error_code": None, "error_message": None, "signature": None, "report": {}}
    try:
        out["signature"], out["report"] = convert(job, scratch)
        out["ok"] = True
    except JobError as exc:
        out["error_code"], out["error_message"], out["report"] = exc.code, exc.message, exc.report
    except BaseException as exc:
        mapped = _resource_error(exc)
        if mapped is not None:
            out["error_code"], out["error_message"] = mapped.code, mapped.message
        else:
            traceback.print_exc()
            out["error_code"] = "conversion_error"
            out["error_message"] = f"conversion failed unexpectedly: {_describe(exc)[:1500]}"
    out["report"].setdefault(
        "conversion_peak_memory_mb", round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
    )
    Path("report.json").write_text(json.dumps(_finite(out), allow_nan=False, default=str))
    sys.stdout.flush()
    # Skip interpreter teardown: user code may have left threads or atexit hooks behind.
    os._exit(0 if out["ok"] else 1)


if __name__ == "__main__":
    main()
