"""Validate an uploaded (or converted) ONNX model and measure it.

Runs as its own process (`python -m workers.onnx_validate MODEL REPORT_JSON`) so that a parser
crash cannot take the Celery worker down and `peak_memory_mb` measures this model alone.
The caller applies resource limits. No torch, no Django.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workers.signature import sample_input, tensor_spec

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
LATENCY_RUNS = 20


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


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _check_graph(path: Path) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise InvalidModel("not_onnx", f"the file is not an ONNX model ({type(exc).__name__}: {exc})") from None
    if not model.graph.node and not model.graph.output:
        raise InvalidModel("not_onnx", "the file is not an ONNX model (no graph)")
    for tensor in list(model.graph.initializer):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            from workers.external_data import ExternalDataError, check_external_data

            try:
                check_external_data(path, model)
            except ExternalDataError as exc:
                raise InvalidModel("external_data", f"external data refused: {exc}") from None
            raise InvalidModel(
                "external_data",
                f"initializer {tensor.name!r} uses external data; upload a self-contained model "
                "(onnx.save(model, path, save_as_external_data=False))",
            )
    domains = {node.domain for node in model.graph.node} | {op.domain for op in model.opset_import}
    custom = sorted(d for d in domains if d not in STANDARD_DOMAINS)
    if custom:
        raise InvalidModel("custom_operator", f"custom operator domains are not allowed: {', '.join(custom)}")
    try:
        onnx.checker.check_model(model, full_check=False)
    except onnx.checker.ValidationError as exc:
        raise InvalidModel("onnx_checker", f"onnx.checker rejected the model: {str(exc).strip()[:2000]}") from None
    return model


def validate(path: Path) -> ValidationResult:
    import onnxruntime as ort

    try:
        model = _check_graph(path)
        rss_before = _max_rss_mb()
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
        rng = np.random.default_rng(0)
        feed = {spec["name"]: sample_input(spec, dynamic_size=2, rng=rng) for spec in inputs}
        timings = []
        try:
            for _ in range(LATENCY_RUNS):
                start = time.perf_counter()
                session.run(None, feed)
                timings.append((time.perf_counter() - start) * 1000.0)
        except Exception as exc:  # see above: onnxruntime's run errors are untyped
            raise InvalidModel("sample_run", f"the model failed on a generated sample input: {exc}") from None
        opsets = {op.domain or "ai.onnx": op.version for op in model.opset_import}
        report = {
            "latency_ms_p50": round(float(np.median(timings)), 4),
            "peak_memory_mb": round(max(_max_rss_mb() - rss_before, 0.0), 2),
            "opset": opsets.get("ai.onnx"),
            "parameter_count": int(sum(int(np.prod(t.dims)) for t in model.graph.initializer)),
            "sample_shapes": {k: list(v.shape) for k, v in feed.items()},
        }
        return ValidationResult(ok=True, signature={"inputs": inputs, "outputs": outputs}, report=report)
    except InvalidModel as exc:
        return ValidationResult(ok=False, error_code=exc.code, error_message=exc.message)


def main(argv: list[str]) -> int:
    model_path, report_path = Path(argv[1]), Path(argv[2])
    result = validate(model_path)
    report_path.write_text(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))


def validate_in_subprocess(path: Path, *, timeout_s: float, memory_limit_mb: int = 8192) -> ValidationResult:
    """Run `validate` in a child process with an address-space limit and a wall-clock deadline.

    A crash, a kill or a timeout becomes a failed result with the reason; never an exception.
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
                [sys.executable, "-m", "workers.onnx_validate", str(path), str(report_path)],
                cwd=scratch, env=env, preexec_fn=_limits, capture_output=True, timeout=timeout_s, check=False,
            )
        except subprocess.TimeoutExpired:
            return ValidationResult(ok=False, error_code="timeout",
                                    error_message=f"validation exceeded its time limit of {timeout_s:.0f} s")
        if proc.returncode != 0 or not report_path.exists():
            tail = proc.stderr.decode(errors="replace")[-1500:]
            reason = "memory limit" if "MemoryError" in tail or "bad_alloc" in tail else f"exit {proc.returncode}"
            return ValidationResult(ok=False, error_code="validator_crashed",
                                    error_message=f"the validator stopped ({reason}) while loading the model: {tail}")
        data = json.loads(report_path.read_text())
        return ValidationResult(**data)
