"""Registry writes: models, versions and the version status machine.

queued → validating → converting → ready | failed. Every transition is a conditional UPDATE
(`WHERE status = <expected>`), so a redelivered task or a second worker never runs a step twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO, Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from modelport.billing.models import MICRO
from modelport.common.problems import Problem
from modelport.registry import selectors
from modelport.registry.models import Model, ModelVersion
from modelport.registry.storage import artifact_store
from workers.signature import SUPPORTED_DTYPES

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")
MAX_TENSORS = 64
MAX_RANK = 8


@dataclass(frozen=True)
class Upload:
    name: str
    stream: IO[bytes]


def model_create(*, owner: AbstractBaseUser, name: str, visibility: str, description: str) -> Model:
    model = Model(owner=owner, name=name, visibility=visibility, description=description)
    model.full_clean(exclude=["owner", "default_version"])
    try:
        with transaction.atomic():
            model.save()
    except IntegrityError:
        raise Problem(409, f"you already have a model named {name}") from None
    return model


def model_set_default(*, model: Model, number: int) -> Model:
    version = model.versions.filter(number=number).first()
    if version is None:
        raise Problem(404, f"{model} has no version {number}")
    if version.status != ModelVersion.Status.READY:
        raise Problem(409, f"version {number} is {version.status}; only a ready version can be the default")
    model.default_version = version
    model.save(update_fields=["default_version"])
    return model


def model_set_royalty(*, model: Model, royalty: int, now: datetime | None = None) -> Model:
    """Set what other callers pay the owner per call (µc), at most MODELPORT_MAX_ROYALTY_CREDITS
    (400 above). A decrease (or no change) applies at once and cancels any pending increase; an
    increase applies MODELPORT_ROYALTY_NOTICE_S from now (a later increase starts its notice
    again), so no caller pays a price they could not have seen — unless nobody but the owner has
    ever called the model (there is no caller to give notice to). Saving the model sets a new
    resolution generation (signals), so calls see the change at once."""
    ceiling = settings.MODELPORT_MAX_ROYALTY_CREDITS * MICRO
    if royalty > ceiling:
        raise Problem(400, f"royalty may be at most {settings.MODELPORT_MAX_ROYALTY_CREDITS} credits per call",
                      errors={"royalty": [f"at most {settings.MODELPORT_MAX_ROYALTY_CREDITS}"]})
    now = now or timezone.now()
    current = selectors.royalty_at(model, now)
    notice = timedelta(seconds=settings.MODELPORT_ROYALTY_NOTICE_S)
    if royalty <= current or not notice or not selectors.model_called_by_others(model=model):
        model.royalty_per_call, model.royalty_pending, model.royalty_pending_at = royalty, None, None
    else:
        model.royalty_per_call, model.royalty_pending, model.royalty_pending_at = current, royalty, now + notice
    model.save(update_fields=["royalty_per_call", "royalty_pending", "royalty_pending_at"])
    return model


def _parse_json_field(name: str, raw: str | None, kind: type) -> Any:
    if raw in (None, ""):
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply for the parser
        message = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        raise Problem(400, f"{name} is not valid JSON: {message}", errors={name: [message]}) from None
    if not isinstance(value, kind):
        raise Problem(400, f"{name} must be a JSON {kind.__name__}", errors={name: [f"expected {kind.__name__}"]})
    return value


def parse_tensor_specs(raw: str | None) -> list[dict[str, Any]] | None:
    """Check `inputs` ([{"name","dtype","shape"}], null for dynamic axes) and normalise it."""
    specs = _parse_json_field("inputs", raw, list)
    if specs is None:
        return None
    if not specs or len(specs) > MAX_TENSORS:
        raise Problem(400, f"inputs must list 1 to {MAX_TENSORS} tensors", errors={"inputs": ["bad length"]})
    seen: set[str] = set()
    out = []
    for i, spec in enumerate(specs):
        where = f"inputs[{i}]"
        if not isinstance(spec, dict) or set(spec) - {"name", "dtype", "shape", "range"}:
            raise Problem(400, f"{where} must be an object with name, dtype and shape", errors={"inputs": [where]})
        name, dtype, shape = spec.get("name"), spec.get("dtype"), spec.get("shape")
        if not isinstance(name, str) or not name or name in seen:
            raise Problem(400, f"{where}.name must be a unique non-empty string", errors={"inputs": [where]})
        if dtype not in SUPPORTED_DTYPES:
            raise Problem(400, f"{where}.dtype {dtype!r} is not one of {sorted(SUPPORTED_DTYPES)}",
                          errors={"inputs": [where]})
        if (not isinstance(shape, list) or len(shape) > MAX_RANK
                or any(d is not None and (not isinstance(d, int) or isinstance(d, bool) or d < 1) for d in shape)):
            raise Problem(400, f"{where}.shape must be a list of positive ints or null (dynamic)",
                          errors={"inputs": [where]})
        seen.add(name)
        out.append({k: spec[k] for k in ("name", "dtype", "shape", "range") if k in spec})
    return out


def model_version_create(*, model: Model, fmt: str, artifact: Upload | None, source: Upload | None,
                         entrypoint: str, init_kwargs_raw: str | None, inputs_raw: str | None,
                         outputs_raw: str | None) -> ModelVersion:
    """Store the uploaded files and queue the version for validation (after commit)."""
    if fmt not in ModelVersion.Format.values:
        raise Problem(400, f"format must be one of {', '.join(ModelVersion.Format.values)}", errors={"format": [fmt]})
    if artifact is None:
        raise Problem(400, "artifact (the model file) is required", errors={"artifact": ["required"]})
    inputs = parse_tensor_specs(inputs_raw)
    outputs = _parse_json_field("outputs", outputs_raw, list)
    if outputs is not None and not all(isinstance(o, str) and o for o in outputs):
        raise Problem(400, "outputs must be a JSON array of names", errors={"outputs": ["expected names"]})
    init_kwargs = _parse_json_field("init_kwargs", init_kwargs_raw, dict) or {}
    if fmt == ModelVersion.Format.STATE_DICT:
        if source is None:
            raise Problem(400, "format state_dict needs the source file", errors={"source": ["required"]})
        if not entrypoint:
            raise Problem(400, "format state_dict needs an entrypoint", errors={"entrypoint": ["required"]})
        if not artifact.name.lower().endswith(WEIGHT_SUFFIXES):
            raise Problem(400, f"state_dict weights must be {', '.join(WEIGHT_SUFFIXES)}",
                          errors={"artifact": ["unsupported file type"]})
    if fmt in (ModelVersion.Format.STATE_DICT, ModelVersion.Format.TORCHSCRIPT) and inputs is None:
        raise Problem(400, f"format {fmt} needs inputs (name, dtype, shape)", errors={"inputs": ["required"]})
    if fmt != ModelVersion.Format.STATE_DICT and source is not None:
        raise Problem(400, "source is only used with format state_dict", errors={"source": ["unexpected"]})

    store = artifact_store()
    upload_digest = store.put(artifact.stream)
    source_digest = store.put(source.stream) if source is not None else ""
    with transaction.atomic():
        Model.objects.select_for_update().filter(pk=model.pk).first()
        number = (model.versions.aggregate(n=Max("number"))["n"] or 0) + 1
        version = ModelVersion.objects.create(
            model=model, number=number, format=fmt, upload_sha256=upload_digest,
            upload_filename=artifact.name[:255], source_sha256=source_digest, entrypoint=entrypoint,
            init_kwargs=init_kwargs, declared_inputs=inputs, declared_outputs=outputs,
        )
        transaction.on_commit(lambda: _enqueue_processing(version.pk))
    return version


def _enqueue_processing(version_id: int) -> None:
    from modelport.registry.tasks import model_version_process

    model_version_process.delay(version_id)


def version_claim(*, version_id: int, stale_after_s: float) -> bool:
    """Move a queued version (or one whose claim went stale) to validating. False: someone has it."""
    now = timezone.now()
    stale = now - timezone.timedelta(seconds=stale_after_s)
    claimed = ModelVersion.objects.filter(pk=version_id, status=ModelVersion.Status.QUEUED).update(
        status=ModelVersion.Status.VALIDATING, claimed_at=now
    ) or ModelVersion.objects.filter(
        pk=version_id, status__in=[ModelVersion.Status.VALIDATING, ModelVersion.Status.CONVERTING],
        claimed_at__lt=stale,
    ).update(status=ModelVersion.Status.VALIDATING, claimed_at=now)
    return bool(claimed)


def version_transition(*, version_id: int, to: str, **fields: Any) -> bool:
    expected = [ModelVersion.Status.VALIDATING, ModelVersion.Status.CONVERTING]
    if to == ModelVersion.Status.READY:
        fields["ready_at"] = timezone.now()
    moved = ModelVersion.objects.filter(pk=version_id, status__in=expected).update(status=to, **fields)
    if moved and to == ModelVersion.Status.READY:
        from modelport.gateway import authcache

        authcache.invalidate_on_commit()  # calls without a version number may now resolve to it
    return bool(moved)


def version_fail(*, version_id: int, code: str, message: str, log: str = "", report: dict | None = None) -> bool:
    extra: dict[str, Any] = {"error": {"code": code, "message": message[:4000]}}
    if log:
        extra["log"] = log[-20000:]
    if report is not None:
        extra["report"] = report
    return version_transition(version_id=version_id, to=ModelVersion.Status.FAILED, **extra)


def versions_reap(*, older_than_s: float) -> int:
    """Fail versions stuck in a transitional state (their worker died and nobody redelivered)."""
    cutoff = timezone.now() - timezone.timedelta(seconds=older_than_s)
    return ModelVersion.objects.filter(
        status__in=[ModelVersion.Status.VALIDATING, ModelVersion.Status.CONVERTING], claimed_at__lt=cutoff
    ).update(status=ModelVersion.Status.FAILED,
             error={"code": "worker_lost", "message": "the validation worker stopped; upload the version again"})
