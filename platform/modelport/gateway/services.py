"""Prediction lifecycle: admission (hold), completion (settle) and failure (release).

Exactly-once: every terminal transition is a conditional UPDATE on the prediction's status
inside the transaction that writes the matching ledger entries; whoever loses the race
(web waiter timing out vs. worker finishing vs. reaper) changes nothing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np
import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone

from modelport.accounts.models import ApiKey
from modelport.billing import services as billing
from modelport.billing.models import CreditAccount
from modelport.common.problems import Problem
from modelport.gateway import authcache, dispatch, fastsql, ratelimit, webhooks
from modelport.gateway.models import Prediction
from modelport.registry import selectors as registry
from modelport.registry.models import ModelVersion

log = logging.getLogger(__name__)

MAX_VERSION_NUMBER = 2**31 - 1  # PostgreSQL integer; larger numbers cannot exist
RESOLVED_VERSION_ID = 13  # index of the version id in a fastsql.RESOLVE row


class NeedsIO(Exception):
    """Raised by the `local_only` variants below when they cannot finish without the database
    or a Redis round trip; the caller then takes the ordinary path in a thread."""


@dataclass
class Admission:
    prediction: Prediction
    version: ModelVersion
    existing: bool = False  # an Idempotency-Key replay: nothing new was held or dispatched
    # Deferred admission: nothing is written yet; the serving worker admits the call (insert +
    # hold, fastsql.ADMIT_MANY) from this row, carried in its frame, before running it.
    deferred_row: dict[str, Any] | None = None


def version_resolve(*, user: Any, owner: str, name: str, number: int | None) -> ModelVersion:
    """The version a call goes to, or a problem: 404 unknown/foreign, 503 not ready or disabled."""
    model = registry.model_access(user=user, owner=owner, name=name)
    version = registry.version_get(model=model, number=number) if number else registry.version_default(model=model)
    if version is None:
        raise Problem(503, f"model {owner}/{name} has no ready version yet")
    if version.status != ModelVersion.Status.READY:
        raise Problem(503, f"version {version.number} of {owner}/{name} is {version.status}, not ready")
    if version.disabled:
        raise Problem(503, f"version {version.number} of {owner}/{name} is disabled")
    version.model = model
    return version


def resolve_call_fast(*, raw_key: str, owner: str, name: str, number: int | None,
                      local_only: bool = False) -> tuple[Any, ApiKey, ModelVersion]:
    """PostgreSQL hot path of `api_key_authenticate` + `version_resolve`: one query (or a
    gateway/authcache.py hit), the same outcomes (401 unknown/revoked key, 404 missing or foreign
    private model or version, 503 not ready/disabled). Builds unsaved model instances from the
    row (no further queries).

    `local_only`: from this process's cache alone, without any I/O (NeedsIO otherwise): the
    generation check, the queue bound and the rate-limit counts are then the caller's to do
    (`version.generation` says which generation the row was read under)."""
    from modelport.accounts.services import KEY_PREFIX, hash_key

    if not raw_key.startswith(KEY_PREFIX) or len(raw_key) > 200:
        raise Problem(401, "invalid or revoked API key")
    if "\x00" in owner + name:
        raise registry.model_not_found(owner.replace("\x00", ""), name.replace("\x00", ""))
    if number is not None and not 0 < number <= MAX_VERSION_NUMBER:
        raise Problem(404, f"model {owner}/{name} has no version {number}")
    cache_key = (hash_key(raw_key), owner, name, number)
    if local_only:
        return _resolved(authcache.peek(cache_key), owner=owner, name=name, number=number)
    try:
        generation, row, queued, counted = authcache.lookup(
            cache_key, queue_of=lambda cached_row: dispatch.version_queue(cached_row[RESOLVED_VERSION_ID]),
            also=lambda pipe, cached_row: ratelimit.rate_limit_queue(pipe, key_id=cached_row[0],
                                                                     spec=cached_row[2]))
    except redis.RedisError as exc:
        raise Problem(503, f"the serving queue is unavailable: {exc}") from None
    cached = row is not None
    if row is None:
        fetched = fastsql.resolve_call(key_hash=cache_key[0], owner=owner, name=name, number=number)
        if fetched is None:
            raise Problem(401, "invalid or revoked API key")
        row = list(fetched)
    if counted is not None and counted[0][0] == row[0]:  # this request was counted with the cache check
        items, results = counted[1]
    else:
        items = results = None
    user, api_key, version = _resolved((generation, row), owner=owner, name=name, number=number,
                                       counted=(items, results))
    if not cached:
        authcache.store(cache_key, generation, row)  # only rows that resolve to a callable version
    version.queued = queued  # the list's length, read with the cache check (None: not read yet)
    return user, api_key, version


def _resolved(hit: tuple[bytes | None, list[Any]] | None, *, owner: str, name: str, number: int | None,
              counted: tuple[Any, Any] | None = None) -> tuple[Any, ApiKey, ModelVersion]:
    """Model instances and refusals from a RESOLVE row (`hit`: its generation and the row; None
    means a local-only lookup missed). `counted`: rate-limit items and their counts, checked
    here (429); None means the caller counts (the local-only path)."""
    from modelport.accounts.services import LAST_USED_RESOLUTION
    from modelport.registry.models import Model

    if hit is None:
        raise NeedsIO("not in this process's resolution cache")
    generation, row = hit
    (key_id, prefix, rate_limit, daily_cap, last_used, user_id, username, is_staff, model_id, owner_id, visibility,
     royalty, default_id, version_id, v_number, v_status, v_disabled, signature, max_queue, artifact, max_batch,
     royalty_pending, royalty_pending_at, max_price) = row
    now = timezone.now()
    if last_used is None or now - last_used > LAST_USED_RESOLUTION:
        if counted is None:
            raise NeedsIO("the key's last use is due for an update")
        ApiKey.objects.filter(pk=key_id).update(last_used_at=now)
        row[4] = now
    if model_id is None or (owner_id != user_id and visibility != Model.Visibility.PUBLIC):
        raise registry.model_not_found(owner, name)
    if version_id is None:
        if number:
            raise Problem(404, f"model {owner}/{name} has no version {number}")
        raise Problem(503, f"model {owner}/{name} has no ready version yet")
    if v_status != ModelVersion.Status.READY:
        raise Problem(503, f"version {v_number} of {owner}/{name} is {v_status}, not ready")
    if v_disabled:
        raise Problem(503, f"version {v_number} of {owner}/{name} is disabled")
    if counted is None:  # the local path: see _resolved_objects
        memo = _resolved_objects.get(id(row))
        if memo is not None and memo[0] is row and memo[1] == generation:
            return memo[2]
    user = get_user_model()(id=user_id, username=username, is_staff=is_staff, is_active=True)
    user.account_max_price = max_price  # read by call_max_price without a query
    api_key = ApiKey(id=key_id, user_id=user_id, prefix=prefix, rate_limit=rate_limit, daily_cap=daily_cap,
                     last_used_at=last_used)
    api_key.user = user
    if counted is not None and counted[0] is not None:  # this request was counted with the cache check
        ratelimit.rate_limit_check(counted[0], counted[1], api_key=api_key)
        api_key.rate_counted = True
    model = Model(id=model_id, owner_id=owner_id, name=name, visibility=visibility, royalty_per_call=royalty,
                  default_version_id=default_id, royalty_pending=royalty_pending,
                  royalty_pending_at=royalty_pending_at)
    version = ModelVersion(id=version_id, model_id=model_id, number=v_number, status=v_status, disabled=v_disabled,
                           signature=signature if isinstance(signature, dict) else json.loads(signature),
                           max_queue=max_queue, artifact_sha256=artifact, max_batch_size=max_batch)
    version.model = model
    version.generation = generation
    if counted is None:
        if len(_resolved_objects) >= authcache.MAX_ENTRIES:
            _resolved_objects.clear()
        _resolved_objects[id(row)] = (row, generation, (user, api_key, version))
    return user, api_key, version


# The objects the local path (event loop, `counted` None) built from a cached row, by the
# row's identity (the entry holds the row, so its id is not reused while the entry lives) and
# its generation: a call resolved from the cache reuses them instead of building four model
# instances (~47 µs per call here, ~7 % of the web's CPU per call at c=32). Shared
# between concurrent calls, so read-only after this function: nothing on the local path
# assigns to them (the thread path, which sets `rate_counted` and `queued`, builds its own).
_resolved_objects: dict[int, tuple[list[Any], Any, tuple[Any, ApiKey, ModelVersion]]] = {}


def prediction_admit(*, user: Any, api_key: ApiKey | None, version: ModelVersion, protocol: str, deadline_s: float,
                     idempotency_key: str | None = None, idempotency_fingerprint: str = "", request_id: str = "",
                     webhook: str = "",
                     webhook_events: list[str] | None = None, defer: bool = False,
                     local_only: bool = False, max_price: int | None = None) -> Admission:
    """Create a prediction and hold its maximum price. Raises Problem(402) when not covered.

    With `defer` (the caller waits for the result until the call's deadline), a plain call —
    PostgreSQL, no idempotency key, webhook, daily cap or royalty — is not written here: the
    Admission carries its row and the serving worker admits it, together with the other calls
    it pops at once, in one statement (402 then comes back as the worker's reply). Measured
    reason: the per-call admission statement and its thread hop were the largest share of the
    web process's CPU per call, and one statement per popped group costs PostgreSQL far less.

    `local_only`: a deferred admission from process caches alone, without any I/O (NeedsIO
    when that is not possible); the queue bound is then the caller's to check.

    An `idempotency_key` already used returns that call (`existing`) if it was made with the
    same request (`idempotency_fingerprint`, api.request_fingerprint), else Problem(422).

    `max_price` (µc, the caller's Modelport-Max-Price; None: the account's default, if any): a
    call whose worst case (its hold: base + royalty + compute over the deadline) exceeds it is
    refused with 412 before anything is held or sent (see price_check)."""
    if local_only:
        return _admit_local(user=user, api_key=api_key, version=version, protocol=protocol, deadline_s=deadline_s,
                            request_id=request_id, defer=defer and not idempotency_key and not webhook,
                            max_price=max_price)
    if idempotency_key:
        existing = Prediction.objects.filter(user=user, idempotency_key=idempotency_key).first()
        if existing is not None:
            return _replayed(existing, idempotency_key=idempotency_key, fingerprint=idempotency_fingerprint)
    queue_admit(version=version)
    model = version.model
    now = timezone.now()
    royalty = registry.royalty_at(model, now) if model.owner_id != user.pk else 0
    quote = billing.quote_for(hardware="cpu", royalty=royalty)
    metering = not settings.MODELPORT_BENCH_DISABLE_METERING
    hold = quote.max_price(deadline_s) if metering else 0
    price_check(hold, max_price if max_price is not None else account_max_price(user))
    account_id = _account_id(user.pk)
    fields = {
        "user": user, "account_id": account_id, "api_key": api_key, "version": version, "protocol": protocol,
        "quote": {"hardware": quote.hardware, "base": quote.base, "per_second": quote.per_second,
                  "royalty": quote.royalty, "owner_id": model.owner_id},
        "hold_amount": hold, "idempotency_key": idempotency_key or None,
        "idempotency_fingerprint": idempotency_fingerprint if idempotency_key else "", "request_id": request_id,
        "deadline_at": now + timedelta(seconds=deadline_s), "webhook": webhook,
        "webhook_events": webhook_events or [],
    }
    capped = api_key is not None and api_key.daily_cap is not None
    if defer and fastsql.available() and not webhook and not capped and not idempotency_key and not royalty:
        prediction = Prediction(**fields, created_at=now)
        prediction.version = version
        return Admission(prediction=prediction, version=version, deferred_row=fastsql.admission_row(prediction))
    try:
        if fastsql.available() and not webhook and not capped:
            prediction = Prediction(**fields)
            admitted, balance = fastsql.admit(prediction=prediction, hold=hold)
            if not admitted:
                raise billing.InsufficientCredits(balance=balance, required=hold)
        else:
            with transaction.atomic():
                if capped:
                    _check_daily_cap(api_key=api_key, hold=hold, now=now)
                prediction = Prediction.objects.create(**fields)
                if metering:
                    billing.credits_hold(account_id=account_id, amount=hold, prediction=prediction)
                if webhook:
                    prediction.version = version
                    webhooks.deliveries_enqueue(prediction=prediction, event="start")
    except billing.InsufficientCredits as exc:
        raise insufficient_credits(balance=exc.balance, required=exc.required) from None
    except IntegrityError:
        if not idempotency_key:
            raise
        existing = Prediction.objects.get(user=user, idempotency_key=idempotency_key)
        return _replayed(existing, idempotency_key=idempotency_key, fingerprint=idempotency_fingerprint)
    prediction.version = version
    return Admission(prediction=prediction, version=version)


def _replayed(existing: Prediction, *, idempotency_key: str, fingerprint: str) -> Admission:
    """The call an Idempotency-Key was first used for, or 422 when this request is another one
    (rows from before fingerprints were stored have none and replay as before)."""
    if existing.idempotency_fingerprint and fingerprint and existing.idempotency_fingerprint != fingerprint:
        raise Problem(422, f"Idempotency-Key {idempotency_key[:60]!r} was already used with a different request "
                           f"(prediction {existing.id}); use a new key for a new request",
                      prediction_id=existing.id)
    return Admission(prediction=existing, version=existing.version, existing=True)


def _admit_local(*, user: Any, api_key: ApiKey | None, version: ModelVersion, protocol: str, deadline_s: float,
                 request_id: str, defer: bool, max_price: int | None) -> Admission:
    model = version.model
    now = timezone.now()
    royalty = registry.royalty_at(model, now) if model.owner_id != user.pk else 0
    quote = billing.quote_cached(hardware="cpu", royalty=royalty)
    account_id = _account_ids.get(user.pk)
    capped = api_key is not None and api_key.daily_cap is not None
    if not defer or royalty or capped or quote is None or account_id is None or not fastsql.available():
        raise NeedsIO("this admission is written by the web or needs uncached facts")
    hold = 0 if settings.MODELPORT_BENCH_DISABLE_METERING else quote.max_price(deadline_s)
    limit = max_price if max_price is not None else user.account_max_price
    if limit is not None:
        price_check(hold, limit)
    prediction, row = fastsql.new_prediction({
        "user_id": user.pk, "account_id": account_id, "api_key_id": api_key.pk if api_key is not None else None,
        "version_id": version.pk, "protocol": protocol,
        "quote": {"hardware": quote.hardware, "base": quote.base, "per_second": quote.per_second, "royalty": 0,
                  "owner_id": model.owner_id},
        "hold_amount": hold, "request_id": request_id, "deadline_at": now + timedelta(seconds=deadline_s),
        "created_at": now,
    }, related={"user": user, "api_key": api_key, "version": version})
    return Admission(prediction=prediction, version=version, deferred_row=row)


def price_check(worst: int, limit: int | None) -> None:
    """412 when a call's worst-case price `worst` (µc: its hold) exceeds the caller's maximum
    price `limit` (µc; None: no limit). Nothing is held, sent or charged for a refused call."""
    if limit is not None and worst > limit:
        raise Problem(412, f"this call may cost up to {billing.format_credits(worst)} credits (base + royalty + "
                           f"compute over its deadline), above the maximum price of "
                           f"{billing.format_credits(limit)} credits; nothing was charged. Raise the maximum "
                           f"(Modelport-Max-Price, or the account's max_price) or shorten the deadline "
                           f"(Modelport-Deadline-Ms)", code="max_price_exceeded",
                      price_up_to=worst / billing.MICRO, max_price=limit / billing.MICRO)


_NO_DEFAULT = object()


def account_max_price(user: Any) -> int | None:
    """The account's default maximum price per call (µc; None: none): from the resolution row
    when the user was built from one, else read."""
    cached = getattr(user, "account_max_price", _NO_DEFAULT)
    if cached is not _NO_DEFAULT:
        return cached  # type: ignore[return-value]
    return CreditAccount.objects.filter(user_id=user.pk).values_list("max_price", flat=True).first()


def max_price_header(raw: str | None) -> int | None:
    """`Modelport-Max-Price` (credits, a decimal number ≥ 0) in µc; None when absent; 400 when
    malformed."""
    if raw is None:
        return None
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite() or value < 0 or value > 10**12:
        raise Problem(400, f"Modelport-Max-Price must be a number of credits (0 or more), not {raw[:40]!r}")
    return int(value * billing.MICRO)


def insufficient_credits(*, balance: int, required: int) -> Problem:
    """The 402 of a call its account cannot cover (amounts in micro-credits)."""
    return Problem(402, f"this call needs up to {billing.format_credits(required)} credits and the balance is "
                        f"{billing.format_credits(balance)}",
                   balance=balance / billing.MICRO, required=required / billing.MICRO)


_account_ids: dict[int, int] = {}


def _account_id(user_id: int) -> int:
    """The user's credit account id (it never changes once created; cached per process)."""
    account_id = _account_ids.get(user_id)
    if account_id is None:
        account_id = CreditAccount.objects.filter(user_id=user_id).values_list("pk", flat=True).first()
        if account_id is None:
            account_id = billing.account_open(user=get_user_model().objects.get(pk=user_id), credits=0).pk
        if len(_account_ids) > 100_000:
            _account_ids.clear()
        _account_ids[user_id] = account_id
    return account_id


def _check_daily_cap(*, api_key: ApiKey, hold: int, now: datetime) -> None:
    """402 when this key's spending today (charges + holds still open) plus `hold` exceeds its
    cap. Locks the key row, so concurrent calls on one key are checked one at a time."""
    ApiKey.objects.select_for_update().filter(pk=api_key.pk).first()
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    today = Prediction.objects.filter(api_key=api_key, created_at__gte=day_start)
    spent = (today.filter(status=Prediction.Status.SUCCEEDED).aggregate(s=Sum("charged"))["s"] or 0) + (
        today.filter(status__in=[Prediction.Status.STARTING, Prediction.Status.PROCESSING])
        .aggregate(s=Sum("hold_amount"))["s"] or 0)
    cap = api_key.daily_cap or 0
    if spent + hold > cap:
        raise Problem(402, f"API key {api_key.prefix} has spent {billing.format_credits(spent)} of its daily cap of "
                           f"{billing.format_credits(cap)} credits; this call needs up to "
                           f"{billing.format_credits(hold)}", balance=None, required=hold / billing.MICRO,
                      cap=cap / billing.MICRO, spent_today=spent / billing.MICRO)


def _owner_account_id(prediction: Prediction) -> int | None:
    owner_id = prediction.quote.get("owner_id")
    return CreditAccount.objects.filter(user_id=owner_id).values_list("pk", flat=True).first()


def prediction_succeed(*, prediction_id: str, output: dict[str, Any] | None, compute_us: int, queue_ms: float,
                       batch_size: int, hardware: str, worker: str, started_at: datetime,
                       compute_share_us: int | None = None) -> Prediction | None:
    """Record the result and settle the hold at the actual price. None if already terminal."""
    with transaction.atomic():
        prediction = (Prediction.objects.select_for_update(of=("self",)).select_related("version__model__owner")
                      .filter(pk=prediction_id, status__in=[Prediction.Status.STARTING, Prediction.Status.PROCESSING])
                      .first())
        if prediction is None:
            return None
        q = prediction.quote
        quote = billing.Quote(hardware=hardware, base=q["base"], per_second=q["per_second"], royalty=q["royalty"])
        billed_us = compute_us if compute_share_us is None else compute_share_us
        charged = min(quote.price(billed_us), prediction.hold_amount)  # 0 with metering off (bench only)
        now = timezone.now()
        prediction.status = Prediction.Status.SUCCEEDED
        prediction.output = output
        prediction.hardware = hardware
        prediction.worker = worker
        prediction.started_at = started_at
        prediction.completed_at = now
        prediction.charged = charged
        prediction.royalty = quote.royalty
        prediction.metrics = {
            "queue_ms": round(queue_ms, 3),
            "compute_ms": round(compute_us / 1000.0, 3),
            "total_ms": round((now - prediction.created_at).total_seconds() * 1000.0, 3),
            "batch_size": batch_size,
        }
        prediction.save(update_fields=["status", "output", "hardware", "worker", "started_at", "completed_at",
                                       "charged", "royalty", "metrics"])
        if prediction.hold_amount:
            billing.credits_settle(prediction=prediction, charged=charged, royalty=quote.royalty,
                                   owner_account_id=_owner_account_id(prediction) if quote.royalty else None)
        if prediction.webhook:
            webhooks.deliveries_enqueue(prediction=prediction, event="completed")
    return prediction


def prediction_fail(*, prediction_id: str, code: str, message: str,
                    status: str = Prediction.Status.FAILED) -> Prediction | None:
    """Fail (or cancel) a non-terminal prediction and release its whole hold. None if terminal."""
    with transaction.atomic():
        prediction = (Prediction.objects.select_for_update()
                      .filter(pk=prediction_id, status__in=[Prediction.Status.STARTING, Prediction.Status.PROCESSING])
                      .first())
        if prediction is None:
            return None
        prediction.status = status
        prediction.error = {"code": code, "message": message}
        prediction.completed_at = timezone.now()
        prediction.save(update_fields=["status", "error", "completed_at"])
        if prediction.hold_amount:
            billing.credits_release(prediction=prediction, memo=code)
        if prediction.webhook:
            webhooks.deliveries_enqueue(prediction=prediction, event="completed")
    return prediction


def prediction_abandon(*, row: dict[str, Any], code: str, message: str) -> bool:
    """A deferred call (see prediction_admit) ended before any worker admitted it — its deadline
    passed in the queue, or the queue was lost: record it as failed, uncharged. False when a
    worker admitted it first; the caller then ends it like any admitted call."""
    return fastsql.abandon(row, code=code, message=message, at=timezone.now().isoformat())


def prediction_unanswered(*, prediction_id: str, protocol: str) -> dict[str, Any]:
    """The outcome of a call whose deadline passed after it became terminal but whose reply
    never reached the web tier (its worker was killed between settling and replying, or Redis
    lost the reply). The database is the record, so:

    - native calls keep their output in the row: the caller gets it (200, as charged);
    - V2 calls do not store outputs: the charge is refunded and the call becomes failed
      ("undelivered"), so nobody pays for a result they never received.

    Returns a reply payload shaped like the serving worker's."""
    with transaction.atomic():
        prediction = (Prediction.objects.select_for_update(of=("self",)).select_related("version__model__owner")
                      .get(pk=prediction_id))
        if prediction.status == Prediction.Status.SUCCEEDED and protocol == "native":
            return {"ok": True, "prediction": prediction_data(prediction)}
        if prediction.status == Prediction.Status.SUCCEEDED:
            charged, royalty = prediction.charged, prediction.royalty
            prediction.status = Prediction.Status.FAILED
            prediction.error = {"code": "undelivered", "message": "the result was lost before it reached the caller"}
            prediction.charged = 0
            prediction.royalty = 0
            prediction.save(update_fields=["status", "error", "charged", "royalty"])
            if charged:
                billing.credits_refund(prediction=prediction, amount=charged, royalty=royalty,
                                       owner_account_id=_owner_account_id(prediction) if royalty else None)
            return {"ok": False, "status": 503, "code": "undelivered",
                    "message": "the result was lost before it reached the caller; nothing was charged"}
    error = prediction.error or {}
    return {"ok": False, "status": 503, "code": error.get("code", "deadline"),
            "message": error.get("message", "no worker answered before the deadline")}


def outputs_expire() -> int:
    """Clear outputs past MODELPORT_OUTPUT_RETENTION_H (records, charges and metrics stay)."""
    cutoff = timezone.now() - timedelta(hours=settings.MODELPORT_OUTPUT_RETENTION_H)
    return Prediction.objects.filter(completed_at__lt=cutoff, output__isnull=False).update(output=None)


# A reserve (billing.PostpaidReserve) of a worker not heartbeating that no statement touched for
# this long is returned by the reaper (a live worker returns its own after RESERVE_IDLE_S).
RESERVE_ABANDONED_S = 120.0


def predictions_reap(*, grace_s: float = 5.0) -> int:
    """Record the answered calls of serving workers' journals that their worker did not record
    (it died between the reply and the statement), then fail calls whose deadline passed
    without a result (lost worker, lost message, dead web process) and release their holds.
    Returns how many calls it recorded or failed. Safe to run concurrently with anything."""
    reaped = len(served_journals_replay())
    try:
        live = {w["id"] for w in dispatch.live_workers(dispatch.sync_redis().hgetall(dispatch.workers_key()))
                if not w["stale"]}
    except redis.RedisError:
        live = None  # who is alive is unknown: no reserve is returned this time
    if live is not None:
        billing.reserves_release_abandoned(live_workers=live, idle_s=RESERVE_ABANDONED_S)
    cutoff = timezone.now() - timedelta(seconds=grace_s)
    ids = list(Prediction.objects.filter(
        status__in=[Prediction.Status.STARTING, Prediction.Status.PROCESSING], deadline_at__lt=cutoff,
    ).values_list("pk", flat=True)[:1000])
    for pid in ids:
        if prediction_fail(prediction_id=pid, code="deadline", message="no worker answered before the deadline"):
            reaped += 1
    return reaped


def predictions_record_served(*, rows: list[dict[str, Any]], balances: dict[int, int]) -> tuple[set[str], set[int]]:
    """Record postpaid calls that a worker served and answered (RECORD_MANY's rows, each
    `charged` its price, `worker` the worker that answered it): admitted and settled in one
    statement per group, charged as answered. A charged call's price is drawn from its
    worker's reserve of the account (fastsql.RECORD_RESERVED: holds cannot touch it, so other
    calls draining the account between the answer and this recording cannot make it free);
    uncharged rows (metering off) need none. Idempotent: a row whose id exists (recorded before,
    or failed by the web at its deadline, which then answered 503 and never read the worker's
    reply) is left as it is.

    Should a reserve not cover its rows (released by the reaper as the worker's, or an
    operator's adjustment took the balance below it), they are charged from the balance
    (RECORD_MANY), and where that no longer covers them recorded succeeded and uncharged, with
    a warning: the balance never goes below zero. Returns (ids recorded now, accounts whose rows
    were not all drawn from a reserve); the accounts' balances after the statements go into
    `balances`."""
    def record(group: list[dict[str, Any]], statement: Any) -> set[str]:
        try:
            return set(statement(group))
        except IntegrityError:  # raced the web's abandon() or a journal replay: go call by call
            return set()

    def each(group: list[dict[str, Any]], statement: Any) -> set[str]:
        done = record(group, statement) if group else set()
        if len(group) > 1:  # the group as a whole was refused or raced: what fits, call by call
            for row in group:
                if row["id"] not in done:
                    done |= record([row], statement)
        return done

    def reserved(group: list[dict[str, Any]]) -> dict[str, int]:
        return fastsql.record_reserved(group, worker=group[0]["worker"], balances=balances)

    def plain(group: list[dict[str, Any]]) -> dict[str, int]:
        return fastsql.record_many(group, balances=balances)

    recorded: set[str] = set()
    for worker in {row["worker"] for row in rows if row["charged"]}:  # one worker's reserve per statement
        recorded |= each([row for row in rows if row["charged"] and row["worker"] == worker], reserved)
    pending = [row for row in rows if row["id"] not in recorded]
    recorded |= each(pending, plain)
    dry = {int(row["account_id"]) for row in pending if row["charged"] and row["id"] in recorded}
    if dry:
        log.warning("answered calls of accounts %s were charged outside their worker's reserve", sorted(dry))
    missing = {row["id"]: row for row in pending if row["id"] not in recorded}
    if missing:
        existing = set(Prediction.objects.filter(pk__in=list(missing)).values_list("pk", flat=True))
        missing = {pid: row for pid, row in missing.items() if pid not in existing}
    for pid, row in missing.items():
        log.warning("call %s was answered but its account no longer covers %s µc: recorded uncharged",
                    pid, row["charged"])
        dry.add(int(row["account_id"]))
        recorded |= record([{**row, "charged": 0, "hold_amount": 0}], plain)
    return recorded, dry


def served_journals_replay() -> set[str]:
    """Record what the serving workers' journals hold and nobody recorded (see
    predictions_record_served; a journal of a live worker is replayed harmlessly: its rows are
    recorded already or are being recorded, and each is recorded once). Returns the ids
    recorded here. A journal expires an hour after its worker last wrote it."""
    client = dispatch.sync_redis()
    recorded: set[str] = set()
    try:
        keys = list(client.scan_iter(dispatch.key("journal", "*"), count=1000))
        journals = [raw for raw in client.mget(keys) if raw] if keys else []
    except redis.RedisError as exc:
        log.warning("serving journals unreadable: %s", exc)
        return recorded
    for raw in journals:
        rows = json.loads(raw)
        existing = set(Prediction.objects.filter(pk__in=[r["id"] for r in rows]).values_list("pk", flat=True))
        rows = [r for r in rows if r["id"] not in existing]  # the usual case: the worker recorded them
        if rows:
            found, _ = predictions_record_served(rows=rows, balances={})
            recorded |= found
    if recorded:
        log.warning("recorded %d answered calls from serving journals", len(recorded))
    return recorded


def outputs_to_json(outputs: list[tuple[str, np.ndarray]]) -> dict[str, Any]:
    """Outputs as JSON values. JSON has no NaN or infinity (and PostgreSQL's jsonb refuses
    them): a non-finite float becomes null, in the stored row and in the response alike."""
    out = {}
    for name, arr in outputs:
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            obj = arr.astype(object)
            obj[~np.isfinite(arr)] = None
            out[name] = obj.tolist()
        else:
            out[name] = arr.tolist()
    return out


def prediction_json(*, pid: str, model: str, version: int, status: str, output: Any, error: Any,
                    metrics: dict[str, Any] | None, charged: int, royalty: int, created_at: datetime,
                    started_at: datetime | None, completed_at: datetime | None, base_url: str = "") -> dict[str, Any]:
    """The prediction object of CONTRACT §4, from plain values (the serving loop's fast path
    renders it without loading the row; `prediction_data` renders a loaded row)."""
    return {
        "id": pid,
        "model": model,
        "version": version,
        "status": status,
        "output": output,
        "error": error,
        "metrics": metrics or {"queue_ms": None, "compute_ms": None, "total_ms": None, "batch_size": None},
        "credits": {"charged": charged / billing.MICRO, "royalty": royalty / billing.MICRO, "charged_micro": charged},
        "created_at": created_at.isoformat(),
        "started_at": started_at.isoformat() if started_at else None,
        "completed_at": completed_at.isoformat() if completed_at else None,
        "urls": {
            "get": f"{base_url}/api/v1/predictions/{pid}",
            "cancel": f"{base_url}/api/v1/predictions/{pid}/cancel",
        },
    }


def prediction_data(prediction: Prediction, *, base_url: str = "") -> dict[str, Any]:
    version = prediction.version
    model = version.model
    return prediction_json(
        pid=prediction.id, model=f"{model.owner.username}/{model.name}", version=version.number,
        status=prediction.status, output=prediction.output, error=prediction.error, metrics=prediction.metrics,
        charged=prediction.charged, royalty=prediction.royalty, created_at=prediction.created_at,
        started_at=prediction.started_at, completed_at=prediction.completed_at, base_url=base_url,
    )


def call_deadline_s(requested_ms: str | float | None = None) -> float:
    """The call's deadline in seconds: the caller's (header `Modelport-Deadline-Ms`, or V2's
    `timeout` parameter) when given, never more than MODELPORT_CALL_DEADLINE_S."""
    ceiling = float(settings.MODELPORT_CALL_DEADLINE_S)
    if requested_ms is None or requested_ms == "":
        return ceiling
    try:
        value = float(requested_ms) / 1000.0
    except (TypeError, ValueError):
        raise Problem(400, f"deadline {requested_ms!r} is not a number of milliseconds") from None
    if not value > 0:
        raise Problem(400, "the deadline must be positive")
    return min(value, ceiling)


def queue_admit(*, version: ModelVersion) -> None:
    """Refuse (429) a call when its version's list already holds `max_queue` calls. Checked
    before anything is held, so a refused call leaves no trace."""
    depth = getattr(version, "queued", None)
    try:
        if depth is None:
            depth = dispatch.sync_redis().llen(dispatch.version_queue(version.pk))
    except redis.RedisError as exc:
        raise Problem(503, f"the serving queue is unavailable: {exc}") from None
    if depth >= version.max_queue:
        raise Problem(429, f"{depth} calls are already waiting for this model; retry later",
                      headers={"Retry-After": "1"})
