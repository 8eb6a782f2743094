"""Registry writes: models, versions and the version status machine.

queued → validating → converting → ready | failed. Every transition is a conditional UPDATE
(`WHERE status = <expected>`), so a redelivered task or a second worker never runs a step twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO, Any

import kombu.exceptions
import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F, Max, OuterRef, Subquery
from django.utils import timezone

from modelport.billing.models import MICRO
from modelport.common.problems import Problem
from modelport.registry import selectors
from modelport.registry.models import Model, ModelVersion
from modelport.registry.storage import artifact_store
from workers import upload_rules

# A version in one of these states holds (or waits for) a conversion worker.
IN_PROGRESS = (ModelVersion.Status.QUEUED, ModelVersion.Status.VALIDATING, ModelVersion.Status.CONVERTING)
# What a refused upload is told to wait: conversions take seconds to minutes.
PENDING_RETRY_AFTER_S = 30


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


def model_update(*, model: Model, visibility: str | None = None, description: str | None = None) -> Model:
    """Change what the owner may change about `model` itself: its visibility and description
    (None leaves a field as it is). The caller has checked write access through
    `selectors.model_access(write=True)`, the one choke point the API uses too. A value the model
    refuses raises a 400 and changes nothing. Saving invalidates cached resolutions (a model made
    private is refused to other callers at once)."""
    changed = {}
    if visibility is not None:
        changed["visibility"] = visibility
    if description is not None:
        limit = Model._meta.get_field("description").max_length or 0  # a TextField does not check it itself
        if len(description) > limit:
            raise Problem(400, f"description: at most {limit} characters", errors={"description": ["too long"]})
        changed["description"] = description
    if not changed:
        return model
    for field, value in changed.items():
        try:
            changed[field] = Model._meta.get_field(field).clean(value, model)
        except ValidationError as exc:
            raise Problem(400, f"{field}: {' '.join(exc.messages)}", errors={field: exc.messages}) from None
    for field, value in changed.items():
        setattr(model, field, value)
    model.save(update_fields=list(changed))
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


def _rule_problem(exc: upload_rules.RuleError) -> Problem:
    return Problem(400, exc.message, errors={exc.field: [exc.reason]})


def parse_tensor_specs(raw: str | None, *, fmt: str = ModelVersion.Format.STATE_DICT) -> list[dict[str, Any]] | None:
    """Check `inputs` ([{"name","dtype","shape","range"?}], null for dynamic axes) and normalise it,
    by the converter's own rules (`workers.upload_rules`) for PyTorch formats."""
    specs = _parse_json_field("inputs", raw, list)
    if specs is None:
        return None
    dtypes = upload_rules.SERVABLE_DTYPES if fmt == ModelVersion.Format.ONNX else upload_rules.CONVERTIBLE_DTYPES
    try:
        return upload_rules.check_input_specs(specs, dtypes=dtypes)
    except upload_rules.RuleError as exc:
        raise _rule_problem(exc) from None


def model_version_create(*, model: Model, fmt: str, artifact: Upload | None, source: Upload | None,
                         entrypoint: str, init_kwargs_raw: str | None, inputs_raw: str | None,
                         outputs_raw: str | None, runtime: str = "auto") -> ModelVersion:
    """Store the uploaded files and queue the version for validation (after commit).

    `runtime`: auto | onnx | torch (see ModelVersion.RequestedRuntime); ONNX uploads run on
    onnxruntime only."""
    if fmt not in ModelVersion.Format.values:
        raise Problem(400, f"format must be one of {', '.join(ModelVersion.Format.values)}", errors={"format": [fmt]})
    runtime = runtime or ModelVersion.RequestedRuntime.AUTO
    if runtime not in ModelVersion.RequestedRuntime.values:
        raise Problem(400, f"runtime must be one of {', '.join(ModelVersion.RequestedRuntime.values)}",
                      errors={"runtime": [runtime]})
    if fmt == ModelVersion.Format.ONNX and runtime == ModelVersion.RequestedRuntime.TORCH:
        raise Problem(400, "an ONNX upload is served by onnxruntime; runtime torch needs a PyTorch format",
                      errors={"runtime": [runtime]})
    if artifact is None:
        raise Problem(400, "artifact (the model file) is required", errors={"artifact": ["required"]})
    inputs = parse_tensor_specs(inputs_raw, fmt=fmt)
    outputs = _parse_json_field("outputs", outputs_raw, list)
    init_kwargs = _parse_json_field("init_kwargs", init_kwargs_raw, dict) or {}
    try:
        if outputs is not None:
            outputs = upload_rules.check_output_names(outputs, input_names=[s["name"] for s in inputs or []])
        if fmt == ModelVersion.Format.STATE_DICT:
            if source is None:
                raise upload_rules.RuleError("source", "format state_dict needs the source file", "required")
            upload_rules.check_entrypoint(entrypoint)
            upload_rules.check_weights_name(artifact.name)
        if fmt == ModelVersion.Format.EXPORTED_PROGRAM:
            upload_rules.check_program_name(artifact.name)
    except upload_rules.RuleError as exc:
        raise _rule_problem(exc) from None
    if fmt in (ModelVersion.Format.STATE_DICT, ModelVersion.Format.TORCHSCRIPT) and inputs is None:
        raise Problem(400, f"format {fmt} needs inputs (name, dtype, shape)", errors={"inputs": ["required"]})
    if fmt != ModelVersion.Format.STATE_DICT and source is not None:
        raise Problem(400, "source is only used with format state_dict", errors={"source": ["unexpected"]})

    upload_admit(owner_id=model.owner_id)
    store = artifact_store()
    upload_digest = store.put(artifact.stream)
    source_digest = store.put(source.stream) if source is not None else ""
    try:
        with transaction.atomic():
            # One account's uploads one at a time, so that the in-progress count below is exact.
            get_user_model().objects.select_for_update().filter(pk=model.owner_id).first()
            _check_in_progress(owner_id=model.owner_id)
            Model.objects.select_for_update().filter(pk=model.pk).first()
            number = (model.versions.aggregate(n=Max("number"))["n"] or 0) + 1
            version = ModelVersion.objects.create(
                model=model, number=number, format=fmt, upload_sha256=upload_digest,
                upload_filename=artifact.name[:255], source_sha256=source_digest,
                source_filename=source.name[-255:] if source is not None else "", entrypoint=entrypoint,
                init_kwargs=init_kwargs, declared_inputs=inputs, declared_outputs=outputs,
                requested_runtime=runtime,
            )
            transaction.on_commit(lambda: _enqueue_processing(version.pk))
    except (kombu.exceptions.OperationalError, redis.RedisError) as exc:
        # The row committed but no worker will hear of it: take it back, unless a worker
        # already claimed it (a message that went out before the error), and say 503.
        deleted, _ = ModelVersion.objects.filter(pk=version.pk, status=ModelVersion.Status.QUEUED).delete()
        if deleted:
            raise Problem(503, f"the conversion queue is unavailable, nothing was saved; try again shortly: {exc}",
                          headers={"Retry-After": "10"}) from None
    return version


def upload_admit(*, owner_id: int) -> None:
    """The per-account upload throttle, before anything is stored: at most
    MODELPORT_UPLOAD_MAX_IN_PROGRESS versions queued, validating or converting (checked again,
    exactly, under the account's lock when the version is created), and
    MODELPORT_UPLOAD_RATE_LIMIT uploads per window (the `limits` library, in Redis). Raises
    Problem 429 with Retry-After."""
    from modelport.gateway.ratelimit import rate_limit_account_hit

    _check_in_progress(owner_id=owner_id)
    rate_limit_account_hit(action="upload", account_id=owner_id, spec=settings.MODELPORT_UPLOAD_RATE_LIMIT)


def _check_in_progress(*, owner_id: int) -> None:
    limit = settings.MODELPORT_UPLOAD_MAX_IN_PROGRESS
    busy = ModelVersion.objects.filter(model__owner_id=owner_id, status__in=IN_PROGRESS).count()
    if busy >= limit:
        raise Problem(429, f"{busy} of your versions are still being validated or converted (at most {limit} at "
                           "a time); upload again when one has finished",
                      headers={"Retry-After": str(PENDING_RETRY_AFTER_S)})


def _enqueue_processing(version_id: int) -> None:
    from modelport.registry.tasks import model_version_process

    model_version_process.delay(version_id)


def version_claim_fair(*, version_id: int, stale_after_s: float) -> int | None:
    """Claim the queued version to work on next, for a `model_version_process(version_id)`
    message; None when there is nothing to do.

    Every queued version has (at least) one message in the convert queue, but a message does
    not fix which version it processes: it takes the queued version of the account served least
    recently (the one whose latest claim is oldest; accounts never served first), oldest upload
    first within an account. So conversions go round-robin across accounts, and one account's
    backlog delays another account's first upload by at most the conversion running now. The
    count of messages still matches the count of queued versions, so each is processed once.
    With nothing queued, `version_id` itself is claimed if its claim went stale (the message of
    a worker that died, redelivered). The claim is a conditional UPDATE; the candidate row is
    locked SKIP LOCKED, so concurrent conversion workers pick different versions.
    """
    last_claim = (ModelVersion.objects.filter(model__owner_id=OuterRef("model__owner_id"), claimed_at__isnull=False)
                  .order_by("-claimed_at").values("claimed_at")[:1])
    for _ in range(8):  # a lost race (another worker claimed the candidate) is retried, boundedly
        with transaction.atomic():
            candidate = (ModelVersion.objects.select_for_update(skip_locked=True, of=("self",))
                         .filter(status=ModelVersion.Status.QUEUED)
                         .annotate(owner_last_claim=Subquery(last_claim))
                         .order_by(F("owner_last_claim").asc(nulls_first=True), "created_at", "pk")
                         .values_list("pk", flat=True).first())
            if candidate is None:
                break
            if ModelVersion.objects.filter(pk=candidate, status=ModelVersion.Status.QUEUED).update(
                    status=ModelVersion.Status.VALIDATING, claimed_at=timezone.now()):
                return int(candidate)
    return version_id if version_claim(version_id=version_id, stale_after_s=stale_after_s) else None


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


def version_break(*, version_id: int, code: str, message: str) -> bool:
    """A ready version that cannot be served (its model process keeps crashing) becomes failed
    with the reason; calls stop resolving to it. False when it was not ready."""
    moved = ModelVersion.objects.filter(pk=version_id, status=ModelVersion.Status.READY).update(
        status=ModelVersion.Status.FAILED, error={"code": code, "message": message[:4000]})
    if moved:
        from modelport.gateway import authcache

        authcache.invalidate_on_commit()
    return bool(moved)


def versions_reap(*, older_than_s: float) -> int:
    """Fail versions stuck in a transitional state (their worker died and nobody redelivered)."""
    cutoff = timezone.now() - timezone.timedelta(seconds=older_than_s)
    return ModelVersion.objects.filter(
        status__in=[ModelVersion.Status.VALIDATING, ModelVersion.Status.CONVERTING], claimed_at__lt=cutoff
    ).update(status=ModelVersion.Status.FAILED,
             error={"code": "worker_lost", "message": "the validation worker stopped; upload the version again"})


def versions_requeue(*, messages_waiting: int) -> int:
    """Send conversion messages for queued versions that have none, so that no version stays
    `queued` forever: one whose message was lost (a Redis restarted without persistence, a web
    process that died between the commit and the enqueue). `messages_waiting` is the convert
    queue's length, read before this call. Messages do not fix their version (see
    version_claim_fair), so topping the count up is enough, and a message too many finds
    nothing to do. Returns how many were sent."""
    missing = ModelVersion.objects.filter(status=ModelVersion.Status.QUEUED).count() - messages_waiting
    if missing <= 0:
        return 0
    ids = list(ModelVersion.objects.filter(status=ModelVersion.Status.QUEUED).order_by("created_at", "pk")
               .values_list("pk", flat=True)[:missing])
    for version_id in ids:
        _enqueue_processing(version_id)
    return len(ids)
