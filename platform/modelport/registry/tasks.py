"""Celery tasks for the registry: thin interfaces over workers/ (validation, conversion)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from celery import current_app, shared_task
from celery.signals import worker_ready
from django.conf import settings

from modelport.registry import services
from modelport.registry.models import ModelVersion
from modelport.registry.storage import artifact_store
from workers.onnx_validate import validate_in_subprocess

if TYPE_CHECKING:
    from workers.convert import ConversionResult

log = logging.getLogger(__name__)


@shared_task(acks_late=True, ignore_result=True)
def model_version_process(version_id: int) -> None:
    """Validate (and for PyTorch formats, convert) one queued version: the one fairest to take
    now, which is not necessarily `version_id` (services.version_claim_fair: round-robin across
    accounts). Idempotent: claims it first."""
    timeout = settings.MODELPORT_VALIDATION_TIMEOUT_S
    claimed = services.version_claim_fair(version_id=version_id, stale_after_s=2 * timeout)
    if claimed is None:
        log.info("nothing queued, and version %s already claimed or finished", version_id)
        return
    version_id = claimed
    version = ModelVersion.objects.get(pk=version_id)
    store = artifact_store()
    with tempfile.TemporaryDirectory(prefix="mp-version-") as tmp:
        work = Path(tmp)
        report: dict = {}
        conversion_log = ""
        if version.format == ModelVersion.Format.ONNX:
            onnx_path = store.copy_to(version.upload_sha256, work / "model.onnx")
        else:
            services.version_transition(version_id=version_id, to=ModelVersion.Status.CONVERTING)
            converted = _convert(version, work)
            if converted is None:
                return
            if converted.runtime == "torch":
                _ready_on_torch(version, converted)
                return
            onnx_path, report, conversion_log = converted.onnx_path, converted.report, converted.log
        data_files: list[Path] = []
        if version.format != ModelVersion.Format.ONNX:
            # A converted model over the external-data threshold keeps its tensors beside it;
            # name them by content so they can be stored next to the model (uploads may not).
            from workers.external_data import content_address_external_data

            data_files = content_address_external_data(onnx_path)
        result = validate_in_subprocess(onnx_path, timeout_s=timeout,
                                        allow_external_data=version.format != ModelVersion.Format.ONNX)
        if not result.ok:
            services.version_fail(version_id=version_id, code=result.error_code or "invalid",
                                  message=result.error_message or "validation failed", log=conversion_log)
            return
        signature = result.signature or {}
        if version.declared_outputs:
            names = [o["name"] for o in signature.get("outputs", [])]
            if names != version.declared_outputs and version.format == ModelVersion.Format.ONNX:
                services.version_fail(version_id=version_id, code="signature_mismatch",
                                      message=f"declared outputs {version.declared_outputs} but the model has {names}")
                return
        if version.format == ModelVersion.Format.ONNX and version.declared_inputs:
            mismatch = _declared_mismatch(version.declared_inputs, signature.get("inputs", []))
            if mismatch:
                services.version_fail(version_id=version_id, code="signature_mismatch", message=mismatch)
                return
        digest = store.put_model(onnx_path, data_files)
        merged = {"parity_max_abs_error": None, **report, **result.report}
        if data_files:
            merged["external_data_bytes"] = sum(f.stat().st_size for f in data_files)
        services.version_transition(version_id=version_id, to=ModelVersion.Status.READY, artifact_sha256=digest,
                                    signature=signature, report=merged, log=conversion_log[-20000:], error=None)


def _declared_mismatch(declared: list[dict], actual: list[dict]) -> str | None:
    by_name = {a["name"]: a for a in actual}
    for spec in declared:
        got = by_name.get(spec["name"])
        if got is None:
            return f"declared input {spec['name']!r} is not an input of the model (it has {sorted(by_name)})"
        if got["dtype"] != spec["dtype"]:
            return f"input {spec['name']!r} is {got['dtype']} in the model, declared {spec['dtype']}"
    return None


def _ready_on_torch(version: ModelVersion, result: ConversionResult) -> None:
    """The version is served by PyTorch itself (in the sandbox), from the upload as it is."""
    services.version_transition(
        version_id=version.pk, to=ModelVersion.Status.READY, runtime=ModelVersion.Runtime.TORCH,
        artifact_sha256=version.upload_sha256, signature=result.signature,
        report={"parity_max_abs_error": None, **result.report}, log=result.log[-20000:], error=None)


def _convert(version: ModelVersion, work: Path) -> ConversionResult | None:
    """Convert a PyTorch upload inside the sandbox; on failure mark the version failed (None).
    The result's `onnx_path` is in `work`; with runtime "torch" there is none."""
    from workers import convert  # imports torch (in the sandbox child); only conversion workers run it
    from workers.sandbox import SandboxError, SandboxLimits, SandboxUnavailable

    store = artifact_store()
    suffix = Path(version.upload_filename).suffix.lower() or ".pt"
    artifact = store.copy_to(version.upload_sha256, work / f"artifact{suffix}")
    source = store.copy_to(version.source_sha256, work / "model_source.py") if version.source_sha256 else None
    out_dir = work / "convert"
    out_dir.mkdir()
    try:
        result = convert.convert_model(
            fmt=version.format, artifact=artifact, source=source, entrypoint=version.entrypoint or None,
            init_kwargs=version.init_kwargs or {}, inputs=version.declared_inputs or [], work_dir=out_dir,
            allow_unsandboxed=settings.MODELPORT_ALLOW_UNSANDBOXED, output_names=version.declared_outputs or None,
            runtime=version.requested_runtime,
            source_name=version.source_filename or None,
            external_data_over_bytes=settings.MODELPORT_ONNX_EXTERNAL_DATA_OVER_BYTES,
            limits=SandboxLimits(wall_seconds=float(settings.MODELPORT_VALIDATION_TIMEOUT_S),
                                 cpu_seconds=settings.MODELPORT_VALIDATION_TIMEOUT_S),
        )
    except SandboxUnavailable as exc:
        services.version_fail(version_id=version.pk, code="sandbox_unavailable",
                              message=f"this platform cannot isolate PyTorch uploads here, so it refuses them: {exc}")
        return None
    except SandboxError as exc:
        services.version_fail(version_id=version.pk, code="sandbox_error",
                              message=f"the conversion sandbox failed to start (a platform fault): {exc}")
        return None
    if result.ok and result.runtime == "torch":
        return result
    if not result.ok or result.onnx_path is None:
        services.version_fail(version_id=version.pk, code=result.error_code or "conversion_failed",
                              message=result.error_message or "conversion failed", log=result.log,
                              report=result.report)
        return None
    # model.onnx stays in out_dir, beside its external data files if it has any.
    return result


@shared_task(ignore_result=True)
def versions_reap() -> int:
    """Fail versions stuck in validating/converting, and re-send the messages of queued versions
    whose message was lost (services.versions_requeue)."""
    reaped = services.versions_reap(older_than_s=2 * settings.MODELPORT_VALIDATION_TIMEOUT_S + 60)
    with current_app.connection_for_write() as conn:
        waiting = conn.default_channel.queue_declare(queue=settings.CELERY_QUEUE_CONVERT).message_count
    requeued = services.versions_requeue(messages_waiting=waiting)
    if requeued:
        log.warning("re-sent %s conversion message(s) for queued versions that had none", requeued)
    return reaped


@worker_ready.connect
def report_isolation(sender: object = None, **kwargs: object) -> None:
    """At worker start, say how user code will be isolated on this host (or that PyTorch uploads
    will be refused), so an operator sees it before the first upload fails."""
    queues = {q.name for q in getattr(getattr(sender, "task_consumer", None), "queues", [])}
    if queues and settings.CELERY_QUEUE_CONVERT not in queues:
        return
    from workers.sandbox import isolation_level

    level = isolation_level()
    if level == "none":
        policy = ("PyTorch uploads run UNSANDBOXED (development setting)" if settings.MODELPORT_ALLOW_UNSANDBOXED
                  else "state_dict and TorchScript uploads will be refused")
        log.warning("sandbox isolation: none on this host; %s", policy)
    else:
        log.info("sandbox isolation: %s", level)
