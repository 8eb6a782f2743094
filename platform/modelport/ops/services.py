"""Operator writes: the audit log and the actions the admin console offers.

Each function that changes something takes the acting user and records an `AuditEntry` (plus
Django's admin `LogEntry` for the object's History page) in the same transaction as the change.

Redis keys written here (all under MODELPORT_REDIS_PREFIX, see gateway/dispatch.py):
- `disabled`  set of ModelVersion ids with `disabled=True`. The database flag is the truth (the
  gateway refuses calls to a disabled version with 503 from it); the set tells serving workers
  which versions to evict and stop taking calls for. Written after commit; a failed write is
  repaired by `disabled_versions_sync` (run periodically by beat, and after every toggle).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from django.conf import settings
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.contenttypes.models import ContentType
from django.db import models, transaction
from django.utils import timezone

from modelport.accounts.models import ApiKey
from modelport.billing.models import LedgerEntry
from modelport.billing.services import credits_grant, format_credits
from modelport.gateway import authcache, dispatch
from modelport.gateway.models import WebhookDelivery
from modelport.ops.models import AuditEntry
from modelport.registry.models import ModelVersion
from modelport.registry.services import model_set_default

log = logging.getLogger(__name__)

REDIS_TIMEOUT_S = 2.0


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=REDIS_TIMEOUT_S,
                                socket_connect_timeout=REDIS_TIMEOUT_S)


def disabled_key() -> str:
    return dispatch.key("disabled")


# --- audit ---------------------------------------------------------------------------------------
def audit_record(*, actor: AbstractBaseUser | None, action: str, obj: models.Model | None = None,
                 details: dict[str, Any] | None = None, message: str = "",
                 log_entry: bool = True) -> AuditEntry:
    """Record that `actor` did `action` (dotted name, e.g. "credits.grant") to `obj`.

    With `obj` and `log_entry`, also writes a CHANGE LogEntry carrying `message` (or the action
    name) so the object's admin History shows it; admin form edits, which Django logs itself,
    pass log_entry=False.
    """
    entry = AuditEntry.objects.create(
        actor=actor if actor is not None and actor.pk else None,
        actor_username=getattr(actor, "username", "") or "",
        action=action,
        object_type=obj._meta.label if obj is not None else "",
        object_id=str(obj.pk) if obj is not None else "",
        object_repr=str(obj)[:200] if obj is not None else "",
        details=details or {},
    )
    if obj is not None and log_entry and actor is not None and actor.pk:
        # The content type is looked up, not taken from ContentType's per-process cache (which
        # LogEntry.objects.log_actions uses): a flush or re-migration recreates content types
        # under a running process (it does between integration tests), and a stale cached id
        # would fail this write and with it the action. One indexed query per admin action.
        meta = obj._meta
        content_type = ContentType.objects.get(app_label=meta.app_label, model=meta.model_name)
        LogEntry.objects.create(user_id=actor.pk, content_type=content_type, object_id=str(obj.pk),
                                object_repr=str(obj)[:200], action_flag=CHANGE, change_message=message or action)
    return entry


# --- credits -------------------------------------------------------------------------------------
OPERATOR_CREDIT_KINDS = (LedgerEntry.Kind.GRANT, LedgerEntry.Kind.REFUND, LedgerEntry.Kind.ADJUSTMENT)


def credits_grant_by_operator(*, user: AbstractBaseUser, credits_micro: int, kind: str, reason: str,
                              actor: AbstractBaseUser) -> bool:
    """Add `credits_micro` µc to `user`'s balance as one ledger entry (via billing's
    `credits_grant`, the only writer of balances) and audit it, in one transaction.

    grant and refund must be positive; an adjustment may be negative and is refused (False,
    nothing written) when the balance cannot cover it.
    """
    if kind not in OPERATOR_CREDIT_KINDS:
        raise ValueError(f"kind must be one of {OPERATOR_CREDIT_KINDS}")
    if credits_micro == 0 or (credits_micro < 0 and kind != LedgerEntry.Kind.ADJUSTMENT):
        raise ValueError("grants and refunds are positive; only an adjustment may take credits away")
    with transaction.atomic():
        applied = credits_grant(user=user, credits_micro=credits_micro, kind=kind, memo=reason, created_by=actor)
        if applied:
            audit_record(actor=actor, action=f"credits.{kind}", obj=user,
                         details={"credits_micro": credits_micro, "reason": reason},
                         message=f"{kind} {format_credits(credits_micro)} credits: {reason}")
    return applied


# --- API keys ------------------------------------------------------------------------------------
def api_key_revoke_by_operator(*, api_key: ApiKey, actor: AbstractBaseUser) -> bool:
    """Revoke `api_key` (effective on its next use) and audit it. False if it was already revoked."""
    with transaction.atomic():
        revoked = ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        if revoked:
            authcache.invalidate_on_commit()
            audit_record(actor=actor, action="api_key.revoke", obj=api_key, message="revoked")
    return bool(revoked)


# --- webhooks ------------------------------------------------------------------------------------
def webhook_resend_by_operator(*, delivery: WebhookDelivery, actor: AbstractBaseUser) -> WebhookDelivery:
    """A new delivery for `delivery`'s prediction (sent after commit), audited. Raises
    Problem(409) when the prediction has no webhook."""
    from modelport.gateway.webhooks import delivery_resend

    with transaction.atomic():
        new = delivery_resend(prediction=delivery.prediction)
        audit_record(actor=actor, action="webhook.resend", obj=delivery.prediction,
                     details={"delivery_id": delivery.pk, "new_delivery_id": new.pk, "event": new.event},
                     message=f"webhook {new.event} resent")
    return new


# --- versions ------------------------------------------------------------------------------------
def version_revalidate(*, version: ModelVersion, actor: AbstractBaseUser) -> bool:
    """Send a finished (ready or failed) version through validation again.

    Conditional: only a version in a terminal state moves back to queued (False otherwise:
    it is already being processed). Until validation finishes calls to it get 503. The task is
    enqueued after commit; it claims the version itself, so a duplicate message is harmless.
    """
    terminal = [ModelVersion.Status.READY, ModelVersion.Status.FAILED]
    with transaction.atomic():
        moved = ModelVersion.objects.filter(pk=version.pk, status__in=terminal).update(
            status=ModelVersion.Status.QUEUED, error=None, claimed_at=None, ready_at=None)
        if not moved:
            return False
        authcache.invalidate_on_commit()
        audit_record(actor=actor, action="version.revalidate", obj=version,
                     details={"from_status": version.status}, message="sent back to validation")
        version_id = version.pk
        transaction.on_commit(lambda: _enqueue_processing(version_id))
    return True


def _enqueue_processing(version_id: int) -> None:
    from modelport.registry.tasks import model_version_process

    model_version_process.delay(version_id)


def version_set_default(*, version: ModelVersion, actor: AbstractBaseUser) -> None:
    """Make `version` its model's default (registry.model_set_default: 409 Problem unless ready)."""
    with transaction.atomic():
        previous = version.model.default_version_id
        model_set_default(model=version.model, number=version.number)
        audit_record(actor=actor, action="version.set_default", obj=version,
                     details={"previous_default_version_id": previous}, message="set as default")


def version_set_disabled(*, version: ModelVersion, disabled: bool, actor: AbstractBaseUser) -> bool:
    """Disable (calls refused with 503, workers evict it) or enable a version.

    Returns False when it already was in that state (nothing recorded). The Redis set
    `<prefix>:disabled` follows after commit; see the module docstring for what repairs it.
    """
    with transaction.atomic():
        changed = ModelVersion.objects.filter(pk=version.pk, disabled=not disabled).update(disabled=disabled)
        if not changed:
            return False
        authcache.invalidate_on_commit()
        audit_record(actor=actor, action="version.disable" if disabled else "version.enable", obj=version,
                     message="disabled" if disabled else "enabled")
        version_id = version.pk
        transaction.on_commit(lambda: _publish_disabled(version_id, disabled))
    return True


def _publish_disabled(version_id: int, disabled: bool) -> None:
    try:
        client = redis_client()
        if disabled:
            client.sadd(disabled_key(), version_id)
        else:
            client.srem(disabled_key(), version_id)
    except redis.RedisError as exc:
        # The DB flag already refuses calls; beat's disabled_versions_sync repairs the set.
        log.warning("could not publish version %s disabled=%s to Redis: %s", version_id, disabled, exc)


def disabled_versions_sync() -> set[int]:
    """Make `<prefix>:disabled` equal to the versions disabled in the database (atomically).

    Raises redis.RedisError when Redis is unreachable. Returns the disabled ids.
    """
    ids = set(ModelVersion.objects.filter(disabled=True).values_list("pk", flat=True))
    pipe = redis_client().pipeline(transaction=True)
    pipe.delete(disabled_key())
    if ids:
        pipe.sadd(disabled_key(), *ids)
    pipe.execute()
    return ids


# --- fleet ---------------------------------------------------------------------------------------
def stale_workers_forget(*, actor: AbstractBaseUser, now: float | None = None) -> list[str]:
    """Remove heartbeats older than MODELPORT_WORKER_STALE_S from `<prefix>:workers` (workers
    that died without saying goodbye). A live worker removed by mistake reappears with its next
    heartbeat. Returns the removed worker ids. Raises redis.RedisError."""
    from modelport.ops.selectors import fleet_workers

    client = redis_client()
    stale = [w.id for w in fleet_workers(client=client, now=now) if w.stale]
    if stale:
        client.hdel(dispatch.workers_key(), *stale)
        audit_record(actor=actor, action="fleet.forget_stale", details={"workers": stale})
    return stale
