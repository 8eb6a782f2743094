"""Process-local cache of call resolutions (API key → user → model → version row).

Every prediction call starts by resolving its API key and target version (fastsql.RESOLVE).
Measured here that query took ~1 ms of a ~6 ms call at concurrency 1; a Redis GET takes ~0.1 ms.
So each web process keeps the rows that resolved to a callable version, tagged with the
*generation* they were read under, and trusts an entry only while

- the generation in Redis (`modelport:authgen:<database hash>`, a random token) is still the one it was read
  under: every change that can alter a resolution sets a new token after its transaction
  commits (`invalidate`: model signals for saves and deletes of keys, users, models and
  versions; explicit calls next to the queryset updates that revoke keys, disable, revalidate
  or ready versions), so a revocation applies to the very next call in every process;
- and it is younger than TTL_S, which bounds staleness when an invalidation could not reach
  Redis or a change was made behind the platform's back (raw SQL).

A missing token (Redis restarted, or never set) is replaced by a new one and that call reads
the database: tokens are random, so an entry from before a restart can never match again.
Rows that end in a refusal (401/404/503) are not cached.

Two other readers of the generation: the web's cache path (api.admit_on_loop) checks it inside
the Redis script that sends the call (dispatch.ENQUEUE) instead of in a pipeline of its own;
serving workers read it with every pop and forget the balances they saw when it changes
(postpaid admission, serving.py), which is why balance-lowering ledger adjustments set it too.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

from modelport.gateway import dispatch

log = logging.getLogger(__name__)

TTL_S = 2.0
MAX_ENTRIES = 10_000

_entries: dict[tuple[Any, ...], tuple[bytes, float, list[Any]]] = {}


def generation_key() -> str:
    """One token per database (not per data-plane prefix): every process that resolves calls
    against this database, whichever Redis prefix its data plane uses, must see the change."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    ident = f"{db.get('HOST')}:{db.get('PORT')}/{db.get('NAME')}"
    return f"modelport:authgen:{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def lookup(cache_key: tuple[Any, ...], *, queue_of: Callable[[list[Any]], str],
           also: Callable[[Any, list[Any]], Any] | None = None,
           ) -> tuple[bytes | None, list[Any] | None, int | None, tuple[list[Any], Any] | None]:
    """(generation, cached row or None, depth of the row's queue or None, extra), in one Redis
    round trip: on a hit the generation check, the queue-bound check (`queue_of(row)`'s length)
    and the commands `also(pipeline, row)` adds (the key's rate-limit counts) travel in one
    pipeline; `extra` is (the cached row those commands were for, what `also` returned) plus
    their results, or None when no pipeline ran — even when the generation turns out stale,
    the commands did run. A None generation means there was no token (a new one is set): don't
    store under it, read the database."""
    client = dispatch.sync_redis()
    entry = _entries.get(cache_key)
    extra = None
    if entry is not None and time.monotonic() - entry[1] <= TTL_S:
        pipe = client.pipeline(transaction=False)
        pipe.get(generation_key())
        pipe.llen(queue_of(entry[2]))
        tag = also(pipe, entry[2]) if also is not None else None
        token, depth, *results = pipe.execute()
        extra = (entry[2], (tag, results))
    else:
        token, depth, entry = client.get(generation_key()), None, None
    if token is None:
        client.set(generation_key(), uuid.uuid4().hex, nx=True)
        return None, None, None, extra
    if entry is None or entry[0] != token:
        _entries.pop(cache_key, None)
        return token, None, None, extra
    return token, entry[2], depth, extra


def peek(cache_key: tuple[Any, ...]) -> tuple[bytes, list[Any]] | None:
    """(generation, row) of a fresh local entry, without asking Redis: the caller must check
    the generation itself before acting on the row (dispatch.ENQUEUE does, in its script)."""
    entry = _entries.get(cache_key)
    if entry is None or time.monotonic() - entry[1] > TTL_S:
        return None
    return entry[0], entry[2]


def store(cache_key: tuple[Any, ...], generation: bytes | None, row: list[Any]) -> None:
    if generation is None:
        return
    if len(_entries) >= MAX_ENTRIES:
        _entries.clear()
    _entries[cache_key] = (generation, time.monotonic(), row)


def invalidate() -> None:
    """Make every process's cached resolutions stale (call after the change commits)."""
    _entries.clear()
    try:
        dispatch.sync_redis().set(generation_key(), uuid.uuid4().hex)
    except redis.RedisError as exc:
        log.warning("could not publish a new resolution generation (%s); caches expire within %ss", exc, TTL_S)


def invalidate_on_commit() -> None:
    from django.db import transaction

    transaction.on_commit(invalidate)


def _on_change(sender: Any, **kwargs: Any) -> None:
    invalidate_on_commit()


def connect_signals() -> None:
    """Saves and deletes of anything a resolution reads invalidate (wired in GatewayConfig.ready)."""
    from django.contrib.auth import get_user_model
    from django.db.models.signals import post_delete, post_save

    from modelport.accounts.models import ApiKey
    from modelport.registry.models import Model, ModelVersion

    for model in (ApiKey, get_user_model(), Model, ModelVersion):
        post_save.connect(_on_change, sender=model, dispatch_uid=f"authcache-save-{model._meta.label}")
        post_delete.connect(_on_change, sender=model, dispatch_uid=f"authcache-delete-{model._meta.label}")
