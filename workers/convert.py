"""Convert an uploaded PyTorch model (state_dict + source, or TorchScript) to a checked ONNX file.

All loading of user data and code (unpickling, importing the source, TorchScript, export, the
eager side of the parity check) happens in `_convert_child.py` inside `workers.sandbox`; this
module only prepares the job, runs it and vets what comes back. ONNX uploads are validated by
`workers.onnx_validate`, not here.

Failure semantics: a `ConversionResult` with `ok=False` is terminal for the upload (bad weights,
mismatched keys, unsupported operator, parity, or a resource limit the model hit). Codes in
`LIMIT_ERROR_CODES` mean the job hit a sandbox limit; the others are the upload's own problems.
Platform problems (no sandbox on this host, setup failure) raise `SandboxError` instead: retry
or alert, don't blame the upload.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers import upload_rules
from workers.external_data import ExternalDataError, check_external_data, external_tensors
from workers.sandbox import (
    CPU_LIMIT,
    FILE_SIZE_LIMIT,
    MEMORY_LIMIT,
    PROCESS_LIMIT,
    TIME_LIMIT,
    SandboxLimits,
    SandboxResult,
    run_in_sandbox,
)

_CHILD = Path(__file__).with_name("_convert_child.py")
FORMATS = frozenset({"state_dict", "torchscript", "exported_program"})
# dtypes the converter can generate inputs for: one rule with the web tier (workers.upload_rules).
INPUT_DTYPES = upload_rules.CONVERTIBLE_DTYPES
LIMIT_ERROR_CODES = frozenset({TIME_LIMIT, CPU_LIMIT, MEMORY_LIMIT, PROCESS_LIMIT, FILE_SIZE_LIMIT})
RUNTIMES = frozenset({"auto", "onnx", "torch"})
# Failures of the conversion itself (not of the model): under runtime "auto" the model is then
# served by PyTorch as it is.
CONVERSION_FAILURES = frozenset({"export_failed", "parity", "not_faithful"})
# Codes the child uses when user code raised something generic; a pids-limit hit explains them.
_GENERIC_CODES = frozenset(
    {"source_error", "entrypoint_failed", "model_error", "export_failed", "conversion_error", PROCESS_LIMIT}
)
_ONNX_NAME = "model.onnx"


@dataclass
class ConversionResult:
    """Outcome of `convert_model`.

    ok: `onnx_path` is the converted model (in `work_dir`, outside the sandbox's scratch) and
    `signature` is `{"inputs": [{name, dtype, shape}], "outputs": [...]}` (shape entries int or
    None). Otherwise `error_code`/`error_message` say why. `report` always holds what was measured:
    parity_max_abs_error, parity_max_rel_error, latency_ms_p50 (onnxruntime's own run time),
    conversion_peak_memory_mb (the job's peak RSS), parameter_count, opset, exporter,
    export_attempts, state_dict_prefix_stripped, isolation... `log` is the tail (8 KB) of the
    job's stdout/stderr. (peak_memory_mb is the validator's, measured in its own process.)

    `runtime` says what serves the model: "onnx" (`onnx_path` is set) or "torch" (no ONNX file:
    the upload itself is served by PyTorch in the sandbox; `runtime_reason` says why when the
    conversion was tried under "auto" and was not faithful, failed parity or failed to export).
    """

    ok: bool
    onnx_path: Path | None = None
    runtime: str = "onnx"
    runtime_reason: str | None = None
    signature: dict[str, Any] | None = None
    report: dict[str, Any] = field(default_factory=dict)
    error_code: str | None = None
    error_message: str | None = None
    log: str = ""

    @property
    def is_limit_error(self) -> bool:
        return self.error_code in LIMIT_ERROR_CODES


class _InvalidRequest(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def convert_model(
    *,
    fmt: str,
    artifact: Path,
    source: Path | None,
    entrypoint: str | None,
    init_kwargs: dict[str, Any],
    inputs: list[dict[str, Any]],
    work_dir: Path,
    limits: SandboxLimits | None = None,
    allow_unsandboxed: bool = False,
    output_names: list[str] | None = None,
    runtime: str = "onnx",
    source_name: str | None = None,
    external_data_over_bytes: int | None = None,
) -> ConversionResult:
    """Convert `artifact` to ONNX in the sandbox and check it against the original.

    `runtime`: "onnx" fails when there is no faithful conversion; "auto" then returns an ok
    result with runtime "torch" and the reason; "torch" skips the export (the model is loaded
    and run in the sandbox for its signature and timing only).

    `inputs`: `[{"name", "dtype", "shape", "range"?}]` as in the API (`range` = [low, high) for
    generated integer inputs; optional). `work_dir` is created if needed; on success it holds
    `model.onnx` (and `model.onnx.data` for models over `external_data_over_bytes`, by default
    protobuf's ~1.9 GB limit); the sandbox scratch inside it is removed. `source_name`: the
    uploaded source file's own name, used in messages (a syntax error names it). Raises
    `SandboxUnavailable`/`SandboxError` for platform problems only.
    """
    limits = limits or SandboxLimits()
    if runtime not in RUNTIMES:
        return ConversionResult(ok=False, error_code="invalid_runtime",
                                error_message=f"runtime {runtime!r} is not one of {sorted(RUNTIMES)}")
    try:
        specs = _check_request(fmt, artifact, source, entrypoint, init_kwargs, inputs, output_names)
    except _InvalidRequest as exc:
        return ConversionResult(ok=False, error_code=exc.code, error_message=exc.message)

    work_dir.mkdir(parents=True, exist_ok=True)
    scratch = work_dir / "scratch"
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(mode=0o700)
    try:
        job = _stage_job(scratch, fmt, artifact, source, entrypoint, init_kwargs, specs, output_names, limits)
        job["runtime"] = runtime
        job["source_name"] = (source_name or (source.name if source else ""))[-200:]
        if external_data_over_bytes is not None:
            job["external_data_over_bytes"] = int(external_data_over_bytes)
        (scratch / "job.json").write_text(json.dumps(job))
        result = run_in_sandbox(
            argv=[sys.executable, "-I", str(_CHILD), str(scratch / "job.json")],
            scratch=scratch,
            limits=limits,
            allow_unsandboxed=allow_unsandboxed,
            readable=[_CHILD],
            report_name="report.json",
        )
        return _interpret(result, job, scratch, work_dir, limits)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _check_request(
    fmt: str,
    artifact: Path,
    source: Path | None,
    entrypoint: str | None,
    init_kwargs: dict[str, Any],
    inputs: list[dict[str, Any]],
    output_names: list[str] | None,
) -> list[dict[str, Any]]:
    if fmt not in FORMATS:
        raise _InvalidRequest(
            "invalid_format", f"format {fmt!r} can't be converted (expected one of {sorted(FORMATS)})"
        )
    if not artifact.is_file():
        raise _InvalidRequest("invalid_artifact", "the artifact file is missing")
    try:
        if fmt == "exported_program":
            # The program carries its own signature; declared inputs (optional) are checked against it.
            upload_rules.check_program_name(artifact.name)
            specs = upload_rules.check_input_specs(inputs, dtypes=upload_rules.CONVERTIBLE_DTYPES) if inputs else []
        else:
            if fmt == "state_dict":
                upload_rules.check_weights_name(artifact.name)
                if source is None or not source.is_file():
                    raise upload_rules.RuleError("source", "a state_dict upload needs the model's Python source file")
                upload_rules.check_entrypoint(entrypoint)
            specs = upload_rules.check_input_specs(inputs, dtypes=upload_rules.CONVERTIBLE_DTYPES)
        if output_names is not None:
            upload_rules.check_output_names(output_names, input_names=[s["name"] for s in specs])
    except upload_rules.RuleError as exc:
        raise _InvalidRequest(f"invalid_{exc.field}", exc.message) from None
    if not isinstance(init_kwargs, dict) or not all(isinstance(k, str) for k in init_kwargs):
        raise _InvalidRequest("invalid_init_kwargs", "init_kwargs must be a JSON object")
    try:
        json.dumps(init_kwargs)
    except (TypeError, ValueError):
        raise _InvalidRequest("invalid_init_kwargs", "init_kwargs must be plain JSON") from None
    return specs


def _stage_job(
    scratch: Path,
    fmt: str,
    artifact: Path,
    source: Path | None,
    entrypoint: str | None,
    init_kwargs: dict[str, Any],
    specs: list[dict[str, Any]],
    output_names: list[str] | None,
    limits: SandboxLimits,
) -> dict[str, Any]:
    """Copy the upload into scratch (the sandbox sees nothing else) and write job.json."""
    inbox = scratch / "in"
    inbox.mkdir()
    artifact_name = {"state_dict": "weights" + artifact.suffix.lower(), "exported_program": "model.pt2"}.get(
        fmt, "model.pt")
    shutil.copyfile(artifact, inbox / artifact_name)
    job: dict[str, Any] = {
        "fmt": fmt,
        "artifact": f"in/{artifact_name}",
        "source": None,
        "entrypoint": entrypoint,
        "init_kwargs": init_kwargs,
        "inputs": specs,
        "output_names": output_names,
        "threads": limits.threads,
    }
    if source is not None and fmt == "state_dict":
        shutil.copyfile(source, inbox / "model_source.py")
        job["source"] = "in/model_source.py"
    (scratch / "job.json").write_text(json.dumps(job))
    return job


def _interpret(
    result: SandboxResult, job: dict[str, Any], scratch: Path, work_dir: Path, limits: SandboxLimits
) -> ConversionResult:
    child = result.report or {}
    child_report = child.get("report")
    report: dict[str, Any] = dict(child_report) if isinstance(child_report, dict) else {}
    report["isolation"] = result.isolation
    report["sandbox_wall_seconds"] = round(result.wall_seconds, 2)
    if result.peak_memory_mb is not None:
        report["sandbox_peak_memory_mb"] = round(result.peak_memory_mb, 1)

    def failed(code: str, message: str) -> ConversionResult:
        return ConversionResult(ok=False, report=report, error_code=code, error_message=message, log=result.log_tail)

    code = child.get("error_code") if isinstance(child.get("error_code"), str) else None
    message = str(child.get("error_message") or "")[:4000]

    # A limit that killed the job explains a missing or partial report.
    if result.killed_reason in (TIME_LIMIT, CPU_LIMIT, MEMORY_LIMIT, FILE_SIZE_LIMIT):
        return failed(result.killed_reason, str(result.limit_message))
    if result.killed_reason == PROCESS_LIMIT and (code is None or code in _GENERIC_CODES):
        detail = f" ({message})" if message else ""
        return failed(PROCESS_LIMIT, f"{result.limit_message}{detail}")
    if code == MEMORY_LIMIT:
        return failed(MEMORY_LIMIT, f"memory limit of {limits.memory_bytes // 2**20} MiB exceeded: {message}")
    if code == PROCESS_LIMIT:
        return failed(PROCESS_LIMIT, f"process limit of {limits.max_processes} processes/threads exceeded: {message}")
    if code == FILE_SIZE_LIMIT:
        return failed(FILE_SIZE_LIMIT, f"file size limit of {limits.file_size_bytes // 2**20} MiB exceeded: {message}")
    if not result.report:
        how = result.killed_reason or f"exit status {result.returncode}"
        return failed("conversion_crashed", f"the conversion stopped without a result ({how})")
    if child.get("ok") is not True and code in CONVERSION_FAILURES and job.get("runtime") == "auto":
        try:
            signature = _check_signature(report.pop("torch_signature", None), job)
        except _InvalidRequest as exc:
            return failed("conversion_error", f"the conversion produced an invalid result: {exc}")
        latency = _number(report.get("torch_latency_ms_p50"))
        report.update(runtime="torch", runtime_reason=message, latency_ms_p50=latency)
        return ConversionResult(ok=True, runtime="torch", runtime_reason=message, signature=signature,
                                report=report, log=result.log_tail)
    if child.get("ok") is not True or result.returncode != 0:
        return failed(code or "conversion_error", message or "conversion failed")
    if job.get("runtime") == "torch":
        try:
            signature = _check_signature(child.get("signature"), job)
        except _InvalidRequest as exc:
            return failed("conversion_error", f"the conversion produced an invalid result: {exc}")
        report.update(runtime="torch", latency_ms_p50=_number(report.get("torch_latency_ms_p50")))
        return ConversionResult(ok=True, runtime="torch", signature=signature, report=report, log=result.log_tail)

    try:
        signature = _check_signature(child.get("signature"), job)
        onnx_path = _collect_onnx(scratch, work_dir)
    except (_InvalidRequest, ExternalDataError) as exc:
        return failed("conversion_error", f"the conversion produced an invalid result: {exc}")
    return ConversionResult(ok=True, onnx_path=onnx_path, signature=signature, report=report, log=result.log_tail)


def _check_signature(raw: Any, job: dict[str, Any]) -> dict[str, Any]:
    """The child is untrusted: accept its outputs only in the documented shape; inputs are ours."""
    outputs = raw.get("outputs") if isinstance(raw, dict) else None
    if not isinstance(outputs, list) or not outputs:
        raise _InvalidRequest("conversion_error", "no outputs in the signature")
    clean = []
    for out in outputs:
        if not (
            isinstance(out, dict)
            and isinstance(out.get("name"), str)
            and out.get("dtype") in INPUT_DTYPES
            and isinstance(out.get("shape"), list)
            and all(d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= 0) for d in out["shape"])
        ):
            raise _InvalidRequest("conversion_error", f"malformed output spec {str(out)[:200]}")
        clean.append({"name": out["name"], "dtype": out["dtype"], "shape": out["shape"]})
    if job["fmt"] == "exported_program":
        # The program named its inputs; what the child read from it is checked like an upload's.
        child_inputs = raw.get("inputs") if isinstance(raw, dict) else None
        if not isinstance(child_inputs, list):
            raise _InvalidRequest("conversion_error", "no inputs in the signature")
        try:
            checked = upload_rules.check_input_specs(
                [{k: v for k, v in i.items() if k in ("name", "dtype", "shape")} for i in child_inputs
                 if isinstance(i, dict)], dtypes=upload_rules.CONVERTIBLE_DTYPES)
        except upload_rules.RuleError as exc:
            raise _InvalidRequest("conversion_error", f"malformed input spec: {exc.message}") from None
        if len(checked) != len(child_inputs):
            raise _InvalidRequest("conversion_error", "malformed input spec")
        declared = [(s["name"], s["dtype"]) for s in job["inputs"]]
        if declared and declared != [(s["name"], s["dtype"]) for s in checked]:
            raise _InvalidRequest("conversion_error", "the signature's inputs differ from the declared ones")
        return {"inputs": [{"name": s["name"], "dtype": s["dtype"], "shape": s["shape"]} for s in checked],
                "outputs": clean}
    inputs = [{"name": s["name"], "dtype": s["dtype"], "shape": s["shape"]} for s in job["inputs"]]
    return {"inputs": inputs, "outputs": clean}


def _collect_onnx(scratch: Path, work_dir: Path) -> Path:
    """Move model.onnx (and vetted external data) out of scratch; refuse links and odd files."""
    produced = scratch / _ONNX_NAME
    st = os.lstat(produced) if produced.exists() or produced.is_symlink() else None
    if st is None or not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        raise _InvalidRequest("conversion_error", "model.onnx is missing or not a regular file")
    check_external_data(produced)
    import onnx

    model = onnx.load(str(produced), load_external_data=False)
    locations = {e.value for _, t in external_tensors(model) for e in t.external_data if e.key == "location"}
    for name in locations:
        data = scratch / name
        data_st = os.lstat(data)  # check_external_data: exists, inside scratch, no symlinks
        if "/" in name or "\\" in name or not stat.S_ISREG(data_st.st_mode) or data_st.st_nlink != 1:
            raise _InvalidRequest("conversion_error", f"external data {name!r} is not a plain file")
        os.replace(data, work_dir / name)
    final = work_dir / _ONNX_NAME
    os.replace(produced, final)
    return final


def _number(value: Any) -> float | None:
    """A finite number the (untrusted) child reported, else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) < 1e12:
        return float(value)
    return None
