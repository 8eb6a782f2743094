"""Native predictions API (CONTRACT §4). The create view is async: while a call waits for its
worker no thread is held (the wait is an awaited BLPOP on the reply list)."""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import SynchronousOnlyOperation
from django.db import close_old_connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from modelport.accounts.models import ApiKey
from modelport.accounts.services import api_key_authenticate, bearer_token
from modelport.common.logging import current_request_id
from modelport.common.problems import Problem, problem_response
from modelport.common.when import parse_when
from modelport.gateway import authcache, dispatch, fastsql, ratelimit, services, webhooks
from modelport.gateway.leanredis import LeanRedis
from modelport.gateway.models import Prediction
from modelport.gateway.ratelimit import rate_limit_hit
from modelport.gateway.tensors import inputs_from_json, loads_strict
from modelport.ops import metrics
from workers import wire

log = logging.getLogger(__name__)
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait(?:=(\d+(?:\.\d+)?))?(?:$|[,;\s])")
_clients: dict[int, aioredis.Redis] = {}
_lean_clients: dict[int, LeanRedis | None] = {}
_router = dispatch.Router()


def redis_client() -> aioredis.Redis:
    """One asyncio Redis pool per event loop (uvicorn runs one loop per process)."""
    import asyncio

    loop_id = id(asyncio.get_running_loop())
    client = _clients.get(loop_id)
    if client is None:
        # redis-py 8 reads with a 5 s timeout by default; a BLPOP may wait up to the call deadline.
        client = aioredis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=5, max_connections=512,
                                         socket_timeout=settings.MODELPORT_CALL_DEADLINE_S + 10)
        _clients[loop_id] = client
    return client


def lean_client() -> LeanRedis | None:
    """The event loop's client for the call exchange (gateway/leanredis.py); None where
    REDIS_URL needs what only redis-py speaks (TLS), and the exchange goes through redis-py."""
    import asyncio

    loop_id = id(asyncio.get_running_loop())
    if loop_id not in _lean_clients:
        _lean_clients[loop_id] = LeanRedis.for_url(settings.REDIS_URL, connect_timeout=5, max_connections=512)
    return _lean_clients[loop_id]


def prefer_wait(header: str | None) -> float | None:
    """Seconds to wait from `Prefer: wait[=N]`; None without it."""
    if not header:
        return None
    match = _PREFER_WAIT.search(header)
    if match is None:
        return None
    return float(match.group(1)) if match.group(1) else services.call_deadline_s()


def authenticate(request: HttpRequest) -> tuple[Any, ApiKey | None]:
    """(user, api key) from `Authorization: Bearer`, or the dashboard's session (CSRF-checked)."""
    header = request.META.get("HTTP_AUTHORIZATION")
    if not header:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            if CsrfViewMiddleware(lambda r: HttpResponse()).process_view(request, None, (), {}) is not None:
                raise Problem(403, "CSRF check failed")
            return user, None
        raise Problem(401, "send 'Authorization: Bearer <api key>'")
    token = bearer_token(header)
    key = api_key_authenticate(raw=token) if token else None
    if key is None:
        raise Problem(401, "invalid or revoked API key")
    return key.user, key


def resolve(request: HttpRequest, owner: str, name: str, number: int | None,
            local_only: bool = False) -> tuple[Any, ApiKey | None, Any]:
    """(user, api key, version) of a call: auth, rate limit, model access, version state.
    `local_only`: from the process's resolution cache, no I/O, rate limit not counted (see
    services.resolve_call_fast); NeedsIO when that is not possible."""
    header = request.META.get("HTTP_AUTHORIZATION")
    token = bearer_token(header) if header else None
    if token is not None and fastsql.available():
        user, api_key, version = services.resolve_call_fast(raw_key=token, owner=owner, name=name, number=number,
                                                            local_only=local_only)
        if not local_only and not getattr(api_key, "rate_counted", False):  # not counted with the cache check
            rate_limit_hit(api_key=api_key)
        return user, api_key, version
    if local_only:
        raise services.NeedsIO("no API key or not PostgreSQL")
    user, key = authenticate(request)
    if key is not None:
        rate_limit_hit(api_key=key)
    return user, key, services.version_resolve(user=user, owner=owner, name=name, number=number)


def _admit_native(request: HttpRequest, owner: str, name: str, number: int | None,
                  local_only: bool = False) -> tuple[Any, ...]:
    """Everything before dispatch, in one thread hop: auth, lookup, input checks, hold. With
    `local_only` (on the event loop; see admit_on_loop) the same without any I/O."""
    if not local_only:
        close_old_connections()
    length = int(request.META.get("CONTENT_LENGTH") or 0)
    user, api_key, version = resolve(request, owner, name, number, local_only)
    if length > settings.MODELPORT_MAX_REQUEST_BYTES:
        raise Problem(413, f"request body exceeds {settings.MODELPORT_MAX_REQUEST_BYTES} bytes")
    try:
        body = loads_strict(request.body or b"{}")
    except ValueError as exc:
        raise Problem(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict) or "input" not in body:
        raise Problem(400, "the body must be an object with an 'input' object", errors={"input": ["required"]})
    arrays = inputs_from_json(version.signature, body["input"], max_elements=settings.MODELPORT_MAX_TENSOR_ELEMENTS)
    deadline_s = services.call_deadline_s(request.META.get("HTTP_MODELPORT_DEADLINE_MS"))
    if local_only and (body.get("webhook") is not None or body.get("webhook_events_filter") is not None):
        raise services.NeedsIO("webhook calls are admitted by the web")
    webhook, events = webhooks.check_request(webhook=body.get("webhook"), events=body.get("webhook_events_filter"))
    idem = request.META.get("HTTP_IDEMPOTENCY_KEY")
    if idem is not None and not (0 < len(idem) <= 200):
        raise Problem(400, "Idempotency-Key must be 1 to 200 characters")
    fingerprint = request_fingerprint(request.path, body) if idem else ""
    wait = prefer_wait(request.META.get("HTTP_PREFER"))
    max_price = services.max_price_header(request.META.get("HTTP_MODELPORT_MAX_PRICE"))
    admission = services.prediction_admit(
        user=user, api_key=api_key, version=version, protocol="native", deadline_s=deadline_s,
        idempotency_key=idem, idempotency_fingerprint=fingerprint, request_id=current_request_id(),
        webhook=webhook, webhook_events=events,
        # Deferred only when the caller waits out the whole deadline: a shorter wait answers 202
        # with a prediction that must already exist.
        defer=wait is not None and wait >= deadline_s, local_only=local_only, max_price=max_price,
    )
    data = services.prediction_data(admission.prediction) if admission.existing else None
    return admission, arrays, data, wait


def request_fingerprint(path: str, body: dict[str, Any]) -> str:
    """sha256 of a call's path and body (keys sorted, so key order and whitespace do not count):
    what an Idempotency-Key is bound to."""
    return hashlib.sha256(path.encode() + b"\0" + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass
class Guard:
    """What dispatch.ENQUEUE checks for a call admitted from the process's caches alone."""
    generation: bytes
    max_queue: int
    api_key: ApiKey
    items: tuple[Any, ...]
    keys: tuple[str, ...]
    args: tuple[int, ...]


class Stale(Exception):
    """The resolution generation changed since the cached row was read: nothing was sent."""


def admit_on_loop(admit: Any, request: HttpRequest, owner: str, name: str,
                   number: int | None) -> tuple[tuple[Any, ...], Guard] | None:
    """`admit(…, local_only=True)` run on the event loop — no thread hop — when the call's
    resolution is cached, its inputs are valid and it can be admitted by the serving worker
    (services.prediction_admit's `defer`); else None, and the caller takes the thread path,
    which counts the rate limit and reports any problem in the usual order."""
    try:
        admitted = admit(request, owner, name, number, local_only=True)
    except (services.NeedsIO, Problem, SynchronousOnlyOperation):
        return None
    admission = admitted[0]
    version = admission.version
    items, keys, args = ratelimit.rate_limit_keys(key_id=admission.prediction.api_key_id,
                                                  spec=admission.prediction.api_key.rate_limit)
    return admitted, Guard(generation=version.generation, max_queue=version.max_queue,
                           api_key=admission.prediction.api_key, items=items, keys=keys, args=args)


async def _refused(marker: str, guard: Guard) -> Problem:
    """The problem a dispatch.ENQUEUE refusal marker stands for (Stale for '!stale')."""
    kind, _, detail = marker.partition(":")
    if kind == "!stale":
        raise Stale()
    if kind == "!rate":
        return await sync_to_async(ratelimit.rate_limit_refusal, thread_sensitive=False)(
            guard.items[int(detail)], guard.api_key)
    return Problem(429, f"{detail} calls are already waiting for this model; retry later", headers={"Retry-After": "1"})


async def _frame(client: aioredis.Redis, *, prediction: Prediction, version_id: int, protocol: str,
                 tensors: list[tuple[str, Any]], model_label: str, version_number: int,
                 admit_row: dict[str, Any] | None) -> tuple[str, bytes]:
    """(the list a call goes to, its data-plane frame)."""
    if _router.needs_refresh():
        _router.refresh(await client.hgetall(dispatch.workers_key()))
    header = {
        "id": prediction.id, "version_id": version_id, "protocol": protocol,
        "reply": dispatch.reply_key(prediction.id), "enqueued": time.time(),
        "deadline": prediction.deadline_at.timestamp(), "request_id": prediction.request_id,
        "model": model_label, "version_number": version_number, "created": prediction.created_at.timestamp(),
        "quote": prediction.quote, "webhook": bool(prediction.webhook),
    }
    if admit_row is not None:
        header["admit"] = admit_row
    return _router.queue_for(version_id), wire.pack(header, tensors)


async def dispatch_call(*, prediction: Prediction, version_id: int, protocol: str,
                        tensors: list[tuple[str, Any]], model_label: str = "", version_number: int = 0,
                        admit_row: dict[str, Any] | None = None) -> None:
    client = redis_client()
    queue, frame = await _frame(client, prediction=prediction, version_id=version_id, protocol=protocol,
                                tensors=tensors, model_label=model_label, version_number=version_number,
                                admit_row=admit_row)
    await client.rpush(queue, frame)


async def call_and_wait(*, prediction: Prediction, version_id: int, protocol: str, tensors: list[tuple[str, Any]],
                        model_label: str, version_number: int, admit_row: dict[str, Any] | None,
                        wait_s: float, guard: Guard | None = None) -> tuple[dict[str, Any], list] | None:
    """Send a call and wait up to `wait_s` for its reply, in one Redis round trip: the frame's RPUSH and the reply's
    BLPOP travel in one write (Redis runs the BLPOP on that connection right after the push),
    through the lean client (gateway/leanredis.py) where it can. Should the push itself fail
    on a live connection (e.g. Redis out of memory), the BLPOP still waits to its end and the
    call then ends as lost (503), uncharged."""
    client = redis_client()
    queue, frame = await _frame(client, prediction=prediction, version_id=version_id, protocol=protocol,
                                tensors=tensors, model_label=model_label, version_number=version_number,
                                admit_row=admit_row)
    reply = dispatch.reply_key(prediction.id)
    if guard is None:
        push: tuple[Any, ...] = ("RPUSH", queue, frame)
    else:  # a resolution from the process's cache: the script checks it and refuses, or sends
        push = ("EVAL", dispatch.ENQUEUE, 3 + len(guard.keys), authcache.generation_key(), queue, reply, *guard.keys,
                guard.generation, guard.max_queue, frame, dispatch.REPLY_TTL_S, *guard.args)
    timeout = _reply_timeout(prediction, wait_s)
    lean = lean_client()
    if lean is not None:  # a read that outlives the BLPOP by 10 s means a lost connection
        sent, item = await lean.execute(push, ("BLPOP", reply, timeout), timeout=timeout + 10)
    else:
        pipe = client.pipeline(transaction=False)
        pipe.execute_command(*push)
        pipe.blpop([reply], timeout=timeout)
        sent, item = await pipe.execute()
    if guard is not None and sent != b"ok":
        raise await _refused(sent.decode(), guard)
    return await _after_wait(prediction, item, deferred_row=admit_row)


def _reply_timeout(prediction: Prediction, wait_s: float) -> float:
    return max(min(wait_s, prediction.deadline_at.timestamp() - time.time()), 0.01)


async def _after_wait(prediction: Prediction, item: Any, *,
                      deferred_row: dict[str, Any] | None) -> tuple[dict[str, Any], list] | None:
    """The worker's reply from the BLPOP's `item`, or None when the wait passed first (None
    item) and the call's deadline has not. After the call's own deadline the call is failed
    here (hold released, or recorded failed when no worker admitted it), and the reply says so."""
    client = redis_client()
    if item is not None:
        return wire.unpack(item[1])
    if time.time() >= prediction.deadline_at.timestamp():
        message = "no worker answered before the deadline"
        deadline_reply: dict[str, Any] = {"ok": False, "status": 503, "code": "deadline", "message": message}
        if deferred_row is not None and await sync_to_async(services.prediction_abandon, thread_sensitive=False)(
                row=deferred_row, code="deadline", message=message):
            return deadline_reply, []  # no worker had admitted it: recorded failed, nothing held
        failed = await sync_to_async(services.prediction_fail, thread_sensitive=False)(
            prediction_id=prediction.id, code="deadline", message=message)
        if failed is None:  # the worker finished at the last moment: take its reply
            item = await client.blpop([dispatch.reply_key(prediction.id)], timeout=1)
            if item is not None:
                return wire.unpack(item[1])
            # Settled, but the reply is gone (worker killed between settling and replying).
            payload = await sync_to_async(services.prediction_unanswered, thread_sensitive=False)(
                prediction_id=prediction.id, protocol=prediction.protocol)
            return payload, []
        return deadline_reply, []
    return None


async def call_lost(prediction: Prediction, exc: Exception, deferred_row: dict[str, Any] | None) -> None:
    """End a call whose data plane failed (Redis down or restarted): failed, nothing charged."""
    log.warning("call %s lost its broker connection: %r", prediction.id, exc)
    message = f"the call could not be routed: {exc}"
    if deferred_row is None or not await sync_to_async(services.prediction_abandon, thread_sensitive=False)(
            row=deferred_row, code="broker_unavailable", message=message):
        await sync_to_async(services.prediction_fail, thread_sensitive=False)(
            prediction_id=prediction.id, code="broker_unavailable", message=message)


async def _lost_broker(prediction: Prediction, exc: Exception, deferred_row: dict[str, Any] | None) -> HttpResponse:
    await call_lost(prediction, exc, deferred_row)
    return problem_response(Problem(503, "the serving queue is unavailable; nothing was charged"))


@csrf_exempt
async def prediction_create(request: HttpRequest, owner: str, name: str, number: int | None = None) -> HttpResponse:
    if request.method != "POST":
        return problem_response(Problem(405, "use POST"))
    on_loop = admit_on_loop(_admit_native, request, owner, name, number)
    if on_loop is not None:
        (admission, arrays, _, wait), guard = on_loop
        try:
            reply = await call_and_wait(
                prediction=admission.prediction, version_id=admission.version.pk, protocol="native", tensors=arrays,
                model_label=f"{owner}/{name}", version_number=admission.version.number,
                admit_row=admission.deferred_row, wait_s=wait, guard=guard)
        except Stale:  # the cached resolution is out of date: the ordinary path reads it again
            pass
        except Problem as problem:
            metrics.call_admissions.labels("cache").inc()
            return problem_response(problem)
        except aioredis.RedisError as exc:
            return await _lost_broker(admission.prediction, exc, admission.deferred_row)
        else:
            metrics.call_admissions.labels("cache").inc()
            return _native_reply(admission.prediction, reply)
    metrics.call_admissions.labels("thread").inc()
    try:
        admission, arrays, existing, wait = await sync_to_async(_admit_native, thread_sensitive=False)(
            request, owner, name, number)
    except Problem as problem:
        return problem_response(problem)
    prediction = admission.prediction
    if existing is not None:
        return JsonResponse(existing, status=200 if prediction.status in Prediction.TERMINAL else 202)
    deferred = admission.deferred_row
    route = {"prediction": prediction, "version_id": admission.version.pk, "protocol": "native", "tensors": arrays,
             "model_label": f"{owner}/{name}", "version_number": admission.version.number, "admit_row": deferred}
    if wait is None:
        try:
            await dispatch_call(**route)
        except aioredis.RedisError as exc:
            return await _lost_broker(prediction, exc, deferred)
        data = await sync_to_async(services.prediction_data, thread_sensitive=False)(prediction)
        return JsonResponse(data, status=201)
    try:
        reply = await call_and_wait(**route, wait_s=wait)
    except aioredis.RedisError as exc:
        return await _lost_broker(prediction, exc, deferred)
    if reply is None:
        data = await sync_to_async(services.prediction_data, thread_sensitive=False)(prediction)
        return JsonResponse(data, status=202)
    return _native_reply(prediction, reply)


def _native_reply(prediction: Prediction, reply: tuple[dict[str, Any], list] | None) -> HttpResponse:
    """The response for a worker's reply to a native call that waited out its deadline."""
    if reply is None:  # cannot happen: the wait covers the whole deadline
        return problem_response(Problem(503, "no worker answered before the deadline", prediction_id=prediction.id))
    payload, _ = reply
    if payload["ok"]:
        return HttpResponse(orjson.dumps(payload["prediction"]), status=200, content_type="application/json",
                            headers={"Preference-Applied": "wait"})
    if payload["status"] == 402:  # refused by the worker's admission (deferred): nothing was recorded
        return problem_response(Problem(402, payload["message"], **payload["extra"]))
    return problem_response(Problem(payload["status"], payload["message"], code=payload["code"],
                                    prediction_id=prediction.id))


def prediction_for(*, user: Any, prediction_id: str) -> Prediction:
    if "\x00" in prediction_id:
        raise Problem(404, "prediction not found")
    found = Prediction.objects.select_related("version__model__owner").filter(pk=prediction_id, user=user)
    prediction = found.first()
    if prediction is None and _being_recorded(prediction_id):
        # A postpaid call's reply leaves its worker before its row is written (~1 ms; see
        # serving.ServingLoop._record): a caller reading it straight after its answer waits for it
        # (a 404 costs two Redis round trips more: the workers' names and one look in their journals).
        give_up = time.monotonic() + RECORDING_WAIT_S
        while prediction is None and time.monotonic() < give_up:
            time.sleep(0.005)
            prediction = found.first()
    if prediction is None:
        raise Problem(404, f"prediction {prediction_id} not found")
    return prediction


RECORDING_WAIT_S = 2.0


def _being_recorded(prediction_id: str) -> bool:
    try:
        return dispatch.being_recorded(dispatch.sync_redis(), prediction_id)
    except redis.RedisError:  # the row may only be missing: answer as if it were
        return False


class PredictionDetailView(APIView):
    def get(self, request: Request, prediction_id: str) -> Response:
        return Response(services.prediction_data(prediction_for(user=request.user, prediction_id=prediction_id)))


class PredictionCancelView(APIView):
    def post(self, request: Request, prediction_id: str) -> Response:
        prediction = prediction_for(user=request.user, prediction_id=prediction_id)
        services.prediction_fail(prediction_id=prediction.pk, code="canceled", message="canceled by the caller",
                                 status=Prediction.Status.CANCELED)
        return Response(services.prediction_data(prediction_for(user=request.user, prediction_id=prediction_id)))


class PredictionWebhookResendView(APIView):
    def post(self, request: Request, prediction_id: str) -> Response:
        prediction = prediction_for(user=request.user, prediction_id=prediction_id)
        delivery = webhooks.delivery_resend(prediction=prediction)
        return Response(webhooks.delivery_data(delivery), status=202)


class PredictionWebhooksView(APIView):
    def get(self, request: Request, prediction_id: str) -> Response:
        prediction = prediction_for(user=request.user, prediction_id=prediction_id)
        deliveries = prediction.webhook_deliveries.prefetch_related("attempt_log").order_by("created_at")
        return Response({"results": [webhooks.delivery_data(d) for d in deliveries]})


class WebhookSecretView(APIView):
    def get(self, request: Request) -> Response:
        return Response({"key": webhooks.secret_for(user=request.user)})


class PredictionListView(APIView):
    def get(self, request: Request) -> Response:
        qs = Prediction.objects.select_related("version__model__owner").filter(user=request.user)
        cursor = request.query_params.get("cursor")
        if cursor:
            qs = qs.filter(created_at__lt=parse_when(cursor, name="cursor", allow_date=False))
        page = list(qs.order_by("-created_at")[:50])
        next_cursor = page[-1].created_at.isoformat() if len(page) == 50 else None
        return Response({"results": [services.prediction_data(p) for p in page], "next": next_cursor})


def account_data(user: Any) -> dict[str, Any]:
    from modelport.billing.models import MICRO
    from modelport.billing.services import account_for

    account = account_for(user=user)
    return {"username": user.username, "credits": account.balance / MICRO, "credits_micro": account.balance,
            "max_price": None if account.max_price is None else account.max_price / MICRO,
            "is_staff": user.is_staff}


class AccountPatchSerializer(serializers.Serializer):
    max_price = serializers.DecimalField(
        max_digits=18, decimal_places=6, min_value=Decimal(0), allow_null=True,
        help_text="credits: the most one call may cost at worst (base + royalty + compute over its deadline); "
                  "a call that may cost more is refused with 412 and nothing is charged. null: no limit. A "
                  "call's Modelport-Max-Price header takes its place for that call.")


class AccountView(APIView):
    def get(self, request: Request) -> Response:
        return Response(account_data(request.user))

    def patch(self, request: Request) -> Response:
        from modelport.billing.services import account_set_max_price

        ser = AccountPatchSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        if "max_price" in ser.validated_data:
            value = ser.validated_data["max_price"]
            account_set_max_price(user=request.user, max_price=None if value is None else int(value * 1_000_000))
        return Response(account_data(request.user))


def health_live(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})
