"""Reads of registry data. `model_access` is the one authorization choke point for models."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q, QuerySet

from modelport.common.problems import Problem
from modelport.registry.models import Model, ModelVersion


def model_not_found(owner: str, name: str) -> Problem:
    return Problem(404, f"model {owner}/{name} not found")


def model_access(*, user: AbstractBaseUser | None, owner: str, name: str, write: bool = False) -> Model:
    """The model `owner/name` if `user` may see it (write: may change it).

    "Missing" and "someone else's private model" raise the same 404 so existence is not leaked;
    writing to someone else's public model is a 403.
    """
    if "\x00" in owner or "\x00" in name:  # PostgreSQL refuses NUL in text: treat as not found
        raise model_not_found(owner.replace("\x00", ""), name.replace("\x00", ""))
    model = Model.objects.select_related("owner", "default_version").filter(owner__username=owner, name=name).first()
    is_owner = model is not None and user is not None and model.owner_id == user.pk
    if model is None or (not is_owner and model.visibility != Model.Visibility.PUBLIC):
        raise model_not_found(owner, name)
    if write and not is_owner:
        raise Problem(403, f"only the owner can change {owner}/{name}")
    return model


def royalty_at(model: Model, now: datetime) -> int:
    """The royalty (µc) a call of `model` admitted at `now` pays: a pending increase applies
    from its `royalty_pending_at` on. Attribute reads and a compare: it runs on every call."""
    pending = model.royalty_pending
    if pending is not None and model.royalty_pending_at is not None and now >= model.royalty_pending_at:
        return pending
    return model.royalty_per_call


def model_called_by_others(*, model: Model) -> bool:
    """Whether anyone but its owner has called `model` (any version, any outcome)."""
    from modelport.gateway.models import Prediction

    return Prediction.objects.filter(version__model_id=model.pk).exclude(user_id=model.owner_id).exists()


def models_visible(*, user: AbstractBaseUser) -> QuerySet[Model]:
    return Model.objects.select_related("owner", "default_version").filter(
        Q(owner=user) | Q(visibility=Model.Visibility.PUBLIC)
    )


def version_default(*, model: Model) -> ModelVersion | None:
    """The version calls go to: the one set as default, else the newest ready version."""
    if model.default_version_id is not None:
        return model.default_version
    return model.versions.filter(status=ModelVersion.Status.READY).order_by("-number").first()


def version_get(*, model: Model, number: int) -> ModelVersion:
    version = model.versions.filter(number=number).first() if 0 < number < 2**31 else None
    if version is None:
        raise Problem(404, f"model {model.owner.username}/{model.name} has no version {number}")
    return version


# Labels and explanations for a version's `report` keys, for people (the dashboard, the admin).
# Keys not listed here are internal details; show them, if at all, under their raw name.
REPORT_FIELDS: dict[str, tuple[str, str]] = {
    "parity_max_abs_error": (
        "Parity: max abs error vs. the original",
        "largest absolute difference between the converted model's outputs and PyTorch's on generated "
        "inputs (empty for ONNX uploads: nothing was converted)",
    ),
    "parity_max_rel_error": (
        "Parity: max relative error vs. the original",
        "the largest difference divided by the largest PyTorch output value, per output",
    ),
    "latency_ms_p50": (
        "Runtime latency p50 (ms, the model alone, not a whole call)",
        "onnxruntime's own time for one run on a generated sample, measured by the validator; a call "
        "takes longer (network, queueing, batching and JSON are not in it)",
    ),
    "latency_ms_p99": (
        "Runtime latency p99 (ms, the model alone, not a whole call)",
        "the runtime's own time at the 99th percentile of the validator's sample runs",
    ),
    "peak_memory_mb": (
        "Peak memory (MB)",
        "peak resident memory the onnxruntime session added while the validator loaded the model and ran "
        "the samples (MiB)",
    ),
    "parameter_count": ("Parameters", "number of weight values (the model's initializers)"),
    "opset": ("ONNX opset", "version of the standard ONNX operator set the model uses"),
    "exporter": ("Exporter", "the PyTorch ONNX exporter whose result passed the parity check"),
    "state_dict_prefix_stripped": (
        "Key prefix removed from the weights",
        "the weights' keys all began with this prefix (saved from nn.DataParallel), so it was removed "
        "before loading",
    ),
    "external_data_bytes": (
        "Weights stored beside the model (bytes)",
        "the model is too large for one ONNX file; its tensors are stored in data files next to it",
    ),
    "conversion_peak_memory_mb": (
        "Conversion peak memory (MB)",
        "peak resident memory of the sandboxed conversion job (MiB)",
    ),
    "conversion_seconds": ("Conversion time (s)", "wall time of the conversion job inside the sandbox"),
    "sandbox_wall_seconds": ("Sandbox wall time (s)", "wall time of the sandboxed job, including its start"),
    "sandbox_peak_memory_mb": ("Sandbox peak memory (MB)", "peak memory of the sandbox's memory cgroup (MiB)"),
    "isolation": ("Sandbox isolation", "how the conversion job was confined: namespaces, or none (development)"),
    "torch_version": ("PyTorch version", "the PyTorch that loaded and exported the model"),
    "sample_shapes": ("Sample input shapes", "shapes of the generated inputs the validator ran"),
    "parity_input_shapes": ("Parity input shapes", "input shapes the parity check compared at"),
    "export_attempts": ("Export attempts", "each exporter tried, and why it was not used"),
    "runtime": ("Runtime", "what serves the version: onnx (onnxruntime) or torch (PyTorch in a sandboxed process)"),
    "runtime_reason": (
        "Why the PyTorch runtime",
        "why the version is not served from ONNX: the export was not faithful, failed parity or failed",
    ),
    "torch_latency_ms_p50": (
        "PyTorch latency p50 (ms, the model alone)",
        "eager PyTorch's own time for one run on the export sample, in the sandboxed validation job",
    ),
    "parity_input_sets": (
        "Parity input sets",
        "the input sets the outputs were compared on: three sizes of every dynamic axis, and positive, "
        "negative, zero, large and edge values",
    ),
    "parity_value_sets_max_rel_error": (
        "Parity: max relative error on the value sets",
        "the largest relative difference on the positive, negative, zero, large-magnitude and edge-value inputs",
    ),
    "parity_sets_skipped": (
        "Parity sets skipped",
        "value sets the model itself refused in PyTorch (so they could not be compared), with its error",
    ),
}


@dataclass(frozen=True)
class ReportRow:
    key: str
    label: str
    help: str
    value: Any


def version_report_rows(*, report: dict[str, Any]) -> list[ReportRow]:
    """The report's entries for people, in REPORT_FIELDS order, then any unlisted keys (labelled
    by their key with underscores as spaces)."""
    rows = [ReportRow(key, label, help_text, report[key]) for key, (label, help_text) in REPORT_FIELDS.items()
            if key in report]
    rows += [ReportRow(key, key.replace("_", " ").capitalize(), "", value)
             for key, value in report.items() if key not in REPORT_FIELDS]
    return rows
