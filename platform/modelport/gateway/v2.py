"""Open Inference Protocol (KServe V2) endpoints at the server root (CONTRACT §5).

Works with an unmodified `tritonclient.http.InferenceServerClient`: no Content-Type required,
binary tensor extension in and out, gzip/deflate bodies, errors always `{"error": "..."}`.
Calls are admitted, held, dispatched and settled exactly like native predictions.
"""

from __future__ import annotations

import json
from typing import Any

import redis
import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from modelport.common.logging import current_request_id
from modelport.common.problems import Problem
from modelport.gateway import api, dispatch, services, v2codec
from modelport.gateway.models import Prediction
from modelport.gateway.tensors import check_array
from modelport.ops import metrics
from modelport.registry import selectors as registry
from modelport.registry.models import ModelVersion

SERVER_NAME = "modelport"
SERVER_VERSION = "0.1.0"


def error(status: int, message: str) -> HttpResponse:
    return HttpResponse(json.dumps({"error": message}), status=status, content_type="application/json")


def ok(data: dict[str, Any]) -> HttpResponse:
    return HttpResponse(json.dumps(data), status=200, content_type="application/json")


def _user(request: HttpRequest) -> Any:
    user, _ = api.authenticate(request)
    return user


def server_ready() -> bool:
    """Database and broker reachable."""
    try:
        close_old_connections()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        dispatch.sync_redis().ping()
    except (redis.RedisError, DatabaseError, OSError):
        return False
    return True


async def health_live(request: HttpRequest) -> HttpResponse:
    return ok({"live": True})


async def health_ready(request: HttpRequest) -> HttpResponse:
    ready = await sync_to_async(server_ready, thread_sensitive=False)()
    return ok({"ready": True}) if ready else error(503, "database or broker unreachable")


async def server_metadata(request: HttpRequest) -> HttpResponse:
    return ok({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": ["binary_tensor_data"]})


def _version_or_problem(request: HttpRequest, owner: str, name: str, number: int | None,
                        *, require_ready: bool) -> ModelVersion:
    close_old_connections()
    user = _user(request)
    if require_ready:
        return services.version_resolve(user=user, owner=owner, name=name, number=number)
    model = registry.model_access(user=user, owner=owner, name=name)
    version = registry.version_get(model=model, number=number) if number else registry.version_default(model=model)
    if version is None:
        raise Problem(404, f"model {owner}/{name} has no version yet")
    version.model = model
    return version


async def model_metadata(request: HttpRequest, owner: str, name: str, number: int | None = None) -> HttpResponse:
    try:
        version = await sync_to_async(_version_or_problem, thread_sensitive=False)(
            request, owner, name, number, require_ready=False)
    except Problem as problem:
        return error(problem.status, problem.detail)
    signature = version.signature or {"inputs": version.declared_inputs or [], "outputs": []}
    versions = await sync_to_async(
        lambda: [str(n) for n in version.model.versions.filter(status="ready").values_list("number", flat=True)],
        thread_sensitive=False)()
    meta = v2codec.model_metadata(f"{owner}/{name}", versions, "onnxruntime_onnx",
                                  signature.get("inputs", []), signature.get("outputs", []))
    return ok(meta)


async def model_ready(request: HttpRequest, owner: str, name: str, number: int | None = None) -> HttpResponse:
    try:
        await sync_to_async(_version_or_problem, thread_sensitive=False)(request, owner, name, number,
                                                                         require_ready=True)
    except Problem as problem:
        return error(problem.status if problem.status in (401, 404) else 400, problem.detail)
    return ok({"name": f"{owner}/{name}", "ready": True})


def _admit_v2(request: HttpRequest, owner: str, name: str, number: int | None,
              local_only: bool = False) -> tuple[Any, ...]:
    if not local_only:
        close_old_connections()
    limit = settings.MODELPORT_MAX_REQUEST_BYTES
    user, api_key, version = api.resolve(request, owner, name, number, local_only)
    length = int(request.META.get("CONTENT_LENGTH") or 0)
    if length > limit:
        raise Problem(413, f"request body exceeds {limit} bytes")
    try:
        body = v2codec.decompress_body(request.body, request.META.get("HTTP_CONTENT_ENCODING"), max_bytes=limit)
        parsed = v2codec.parse_infer_request(
            body, header_length=request.META.get("HTTP_INFERENCE_HEADER_CONTENT_LENGTH"),
            max_elements=settings.MODELPORT_MAX_TENSOR_ELEMENTS, max_body_bytes=limit)
    except v2codec.V2ProtocolError as exc:
        raise Problem(400, exc.message) from None
    specs = {s["name"]: s for s in version.signature["inputs"]}
    unknown = sorted(set(parsed.inputs) - set(specs))
    if unknown:
        raise Problem(400, f"unknown input '{unknown[0]}'; the model takes {sorted(specs)}")
    missing = [n for n in specs if n not in parsed.inputs]
    if missing:
        raise Problem(400, f"missing input '{missing[0]}'")
    arrays = [(n, check_array(specs[n], parsed.inputs[n], max_elements=settings.MODELPORT_MAX_TENSOR_ELEMENTS))
              for n in specs]
    if parsed.outputs is not None:
        known = {o["name"] for o in version.signature["outputs"]}
        for out in parsed.outputs:
            if out.name not in known:
                raise Problem(400, f"unknown output '{out.name}'")
    deadline_s = services.call_deadline_s(_timeout_ms(parsed.parameters))
    max_price = services.max_price_header(request.META.get("HTTP_MODELPORT_MAX_PRICE"))
    admission = services.prediction_admit(user=user, api_key=api_key, version=version, protocol="v2",
                                          deadline_s=deadline_s, request_id=current_request_id(), defer=True,
                                          local_only=local_only, max_price=max_price)
    return admission, arrays, parsed


def _timeout_ms(parameters: dict[str, Any]) -> float | None:
    """The request's `parameters.timeout` (Triton's per-request timeout, in microseconds) in
    milliseconds, None when absent; anything but a positive number is refused (400), as the
    native API refuses a bad Modelport-Deadline-Ms."""
    timeout_us = parameters.get("timeout")
    if timeout_us is None:
        return None
    if isinstance(timeout_us, bool) or not isinstance(timeout_us, int | float):
        raise Problem(400, f"parameter 'timeout' must be a number of microseconds, not {json.dumps(timeout_us)[:40]}")
    return timeout_us / 1000.0


def _problem(problem: Problem) -> HttpResponse:
    response = error(problem.status, problem.detail)
    for key, value in problem.headers.items():
        response[key] = value
    return response


async def _call(admission: Any, arrays: list[tuple[str, Any]], owner: str, name: str,
                guard: api.Guard | None) -> tuple[dict[str, Any], list] | None:
    return await api.call_and_wait(prediction=admission.prediction, version_id=admission.version.pk, protocol="v2",
                                   tensors=arrays, model_label=f"{owner}/{name}",
                                   version_number=admission.version.number, admit_row=admission.deferred_row,
                                   wait_s=float(settings.MODELPORT_CALL_DEADLINE_S), guard=guard)


@csrf_exempt
async def infer(request: HttpRequest, owner: str, name: str, number: int | None = None) -> HttpResponse:
    if request.method != "POST":
        return error(405, "use POST")
    on_loop = api.admit_on_loop(_admit_v2, request, owner, name, number)
    reply = None
    if on_loop is not None:  # resolution cached, inputs valid: no thread hop (see api.admit_on_loop)
        (admission, arrays, parsed), guard = on_loop
        try:
            reply = await _call(admission, arrays, owner, name, guard)
        except api.Stale:  # the cached resolution is out of date: the ordinary path reads it again
            on_loop = None
        except Problem as problem:
            metrics.call_admissions.labels("cache").inc()
            return _problem(problem)
        except aioredis.RedisError as exc:
            await api.call_lost(admission.prediction, exc, admission.deferred_row)
            return error(503, "the serving queue is unavailable; nothing was charged")
    metrics.call_admissions.labels("cache" if on_loop is not None else "thread").inc()
    if on_loop is None:
        try:
            admission, arrays, parsed = await sync_to_async(_admit_v2, thread_sensitive=False)(
                request, owner, name, number)
        except Problem as problem:
            return _problem(problem)
        try:
            reply = await _call(admission, arrays, owner, name, None)
        except aioredis.RedisError as exc:
            await api.call_lost(admission.prediction, exc, admission.deferred_row)
            return error(503, "the serving queue is unavailable; nothing was charged")
    prediction: Prediction = admission.prediction
    if reply is None:  # cannot happen: the wait covers the whole deadline
        return error(503, "no worker answered before the deadline")
    payload, outputs = reply
    if not payload["ok"]:
        return error(payload["status"], payload["message"])
    selected, binary = parsed.select_outputs(outputs)
    charged = payload["charged"] / 1_000_000
    body, header_length = v2codec.encode_infer_response(
        model_name=f"{owner}/{name}", model_version=str(admission.version.number), request_id=parsed.id,
        outputs=selected, binary=binary,
        parameters={"credits_charged": charged, "prediction_id": prediction.id},
    )
    body, encoding = v2codec.maybe_compress(body, request.META.get("HTTP_ACCEPT_ENCODING"))
    response = HttpResponse(body, status=200, content_type="application/json" if header_length is None
                            else "application/octet-stream")
    if header_length is not None:
        response[v2codec.HEADER_LENGTH_HEADER] = str(header_length)
    if encoding:
        response["Content-Encoding"] = encoding
    return response
