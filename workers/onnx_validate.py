"""Validate an uploaded (or converted) ONNX model and measure it.

Runs as its own process (`python -m workers.onnx_validate MODEL REPORT_JSON [--allow-external-data]`)
so that a parser crash cannot take the Celery worker down and `peak_memory_mb` measures this model
alone.
The caller applies resource limits. No torch, no Django.
"""

from __future__ import annotations

import gc
import json
import math
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workers.signature import sample_input, tensor_spec
from workers.upload_rules import MAX_SAMPLE_ELEMENTS

LATENCY_RUNS = 20
SAMPLE_DYNAMIC_SIZE = 2  # the size of every dynamic axis in the generated sample


@dataclass
class ValidationResult:
    ok: bool
    signature: dict[str, Any] | None = None
    report: dict[str, Any] = field(default_factory=dict)
    error_code: str | None = None
    error_message: str | None = None


class InvalidModel(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _status_mb(field: str) -> float | None:
    """A VmRSS/VmHWM line of /proc/self/status, in MiB (None where there is no such line)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _reset_peak_rss() -> float | None:
    """Reset this process's peak resident set (VmHWM) to its current RSS and return that RSS in
    MiB, or None where the kernel does not allow it (the peak then can't be attributed)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # 5: reset the peak RSS (Documentation/filesystems/proc.rst)
    except OSError:
        return None
    return _status_mb("VmRSS")


def _check_graph(path: Path, *, allow_external_data: bool) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    from workers.external_data import ExternalDataError, check_external_data, check_operator_domains, external_tensors

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise InvalidModel("not_onnx", f"the file is not an ONNX model ({type(exc).__name__}: {exc})") from None
    if not model.graph.node and not model.graph.output:
        raise InvalidModel("not_onnx", "the file is not an ONNX model (no graph)")
    # Every tensor that can carry data (initializers, Constant attributes, subgraphs, functions):
    # the same walk as the converter's, so a reference hidden in an If branch is vetted too.
    external = list(external_tensors(model))
    if external:
        try:
            check_external_data(path, model)
        except ExternalDataError as exc:
            raise InvalidModel("external_data", f"external data refused: {exc}") from None
        if not allow_external_data:
            owner, tensor = external[0]
            raise InvalidModel(
                "external_data",
                f"tensor {tensor.name!r} ({owner}) uses external data; upload a self-contained model "
                "(onnx.save(model, path, save_as_external_data=False))",
            )
    try:
        check_operator_domains(model)
    except ExternalDataError as exc:
        raise InvalidModel("custom_operator", exc.message) from None
    try:
        onnx.checker.check_model(str(path) if external else model, full_check=False)
    except onnx.checker.ValidationError as exc:
        raise InvalidModel("onnx_checker", f"onnx.checker rejected the model: {str(exc).strip()[:2000]}") from None
    return model


def _check_sample_sizes(inputs: list[dict[str, Any]]) -> None:
    """Refuse inputs whose static dims alone make a generated sample too big to build."""
    for spec in inputs:
        elements = math.prod(d if d is not None else SAMPLE_DYNAMIC_SIZE for d in spec["shape"])
        if elements > MAX_SAMPLE_ELEMENTS:
            size = elements * np.dtype(spec["dtype"]).itemsize
            raise InvalidModel(
                "input_too_large",
                f"input {spec['name']!r} has the static shape {spec['shape']}: {elements:,} elements "
                f"({size / 2**30:,.1f} GiB of {spec['dtype']}), and the check runs the model on a sample of "
                f"that shape; at most {MAX_SAMPLE_ELEMENTS:,} elements per input can be checked. Export "
                "large axes as dynamic (a dim_param such as 'batch') instead of a fixed size",
            )


def validate(path: Path, *, allow_external_data: bool = False) -> ValidationResult:
    """Check the model and measure it. `allow_external_data`: the model may keep tensors in files
    beside it (converted models over ~1.9 GB; vetted by `check_external_data`); uploads may not.

    Report: `latency_ms_p50`, the median of LATENCY_RUNS `session.run` calls on one generated
    sample, is onnxruntime's own time, not an API call's (no network, queueing, batching or JSON);
    `peak_memory_mb`, the peak resident memory the onnxruntime session added to this process
    while it loaded the model and ran the samples (VmHWM after a reset, minus the RSS before
    loading); null where the kernel does not let a process reset its peak.
    """
    import onnxruntime as ort

    try:
        model = _check_graph(path, allow_external_data=allow_external_data)
        opsets = {op.domain or "ai.onnx": op.version for op in model.opset_import}
        parameter_count = int(sum(math.prod(t.dims) for t in model.graph.initializer))
        del model
        gc.collect()
        rss_before = _reset_peak_rss()
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises several untyped errors; all mean "cannot load"
            raise InvalidModel("onnxruntime_load", f"onnxruntime cannot load the model: {exc}") from None
        try:
            inputs = [tensor_spec(i.name, i.type, list(i.shape)) for i in session.get_inputs()]
            outputs = [tensor_spec(o.name, o.type, list(o.shape)) for o in session.get_outputs()]
        except ValueError as exc:
            raise InvalidModel("unsupported_type", str(exc)) from None
        _check_sample_sizes(inputs)
        rng = np.random.default_rng(0)
        feed = {spec["name"]: sample_input(spec, dynamic_size=SAMPLE_DYNAMIC_SIZE, rng=rng) for spec in inputs}
        timings = []
        try:
            for _ in range(LATENCY_RUNS):
                start = time.perf_counter()
                session.run(None, feed)
                timings.append((time.perf_counter() - start) * 1000.0)
        except Exception as exc:  # see above: onnxruntime's run errors are untyped
            raise InvalidModel("sample_run", f"the model failed on a generated sample input: {exc}") from None
        peak = _status_mb("VmHWM") if rss_before is not None else None
        added = peak - rss_before if peak is not None and rss_before is not None else None
        report = {
            "latency_ms_p50": round(float(np.median(timings)), 4),
            "peak_memory_mb": round(max(added, 0.0), 2) if added is not None else None,
            "opset": opsets.get("ai.onnx"),
            "parameter_count": parameter_count,
            "sample_shapes": {k: list(v.shape) for k, v in feed.items()},
        }
        return ValidationResult(ok=True, signature={"inputs": inputs, "outputs": outputs}, report=report)
    except InvalidModel as exc:
        return ValidationResult(ok=False, error_code=exc.code, error_message=exc.message)


def main(argv: list[str]) -> int:
    model_path, report_path = Path(argv[1]), Path(argv[2])
    result = validate(model_path, allow_external_data="--allow-external-data" in argv[3:])
    report_path.write_text(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))


def validate_in_subprocess(
    path: Path, *, timeout_s: float, memory_limit_mb: int = 8192, allow_external_data: bool = False
) -> ValidationResult:
    """Run `validate` in a child process with an address-space limit and a wall-clock deadline.

    A crash, a kill or a timeout becomes a failed result with the reason (the error's last line,
    never a traceback); never an exception.
    """
    import os
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mp-validate-") as scratch:
        report_path = Path(scratch) / "report.json"
        limit = memory_limit_mb * 1024 * 1024

        def _limits() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

        env = {k: v for k, v in os.environ.items() if k in {"PATH", "PYTHONPATH", "HOME", "LANG"}}
        env["OMP_NUM_THREADS"] = "1"
        repo_root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = repo_root
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "workers.onnx_validate", str(path), str(report_path),
                 *(["--allow-external-data"] if allow_external_data else [])],
                cwd=scratch, env=env, preexec_fn=_limits, capture_output=True, timeout=timeout_s, check=False,
            )
        except subprocess.TimeoutExpired:
            return ValidationResult(ok=False, error_code="timeout",
                                    error_message=f"validation exceeded its time limit of {timeout_s:.0f} s")
        if proc.returncode != 0 or not report_path.exists():
            tail = proc.stderr.decode(errors="replace")[-4000:]
            reason = "memory limit" if "MemoryError" in tail or "bad_alloc" in tail else f"exit {proc.returncode}"
            last = next((line.strip() for line in reversed(tail.splitlines()) if line.strip()), "")
            return ValidationResult(ok=False, error_code="validator_crashed",
                                    error_message=f"the validator stopped ({reason}) while checking the model"
                                    + (f": {last[:500]}" if last else ""))
        data = json.loads(report_path.read_text())
        return ValidationResult(**data)
