"""Per-API-key request rate limits, with the `limits` library (fixed windows in Redis)."""

from __future__ import annotations

import logging
import time
from functools import lru_cache
from typing import Any

import redis
from django.conf import settings
from limits import RateLimitItem, parse_many
from limits.storage import RedisStorage, storage_from_string
from limits.strategies import FixedWindowRateLimiter

from modelport.accounts.models import ApiKey
from modelport.common.problems import Problem

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _limiter() -> FixedWindowRateLimiter:
    storage = storage_from_string(settings.REDIS_URL.replace("redis://", "redis://", 1),
                                  key_prefix=f"{settings.MODELPORT_REDIS_PREFIX}:rl")
    assert isinstance(storage, RedisStorage)
    return FixedWindowRateLimiter(storage)


@lru_cache(maxsize=256)
def _items(spec: str) -> list[RateLimitItem]:
    return parse_many(spec)


def _refuse(item: RateLimitItem, api_key: ApiKey) -> Problem:
    reset = _limiter().get_window_stats(item, str(api_key.pk)).reset_time
    retry = max(1, int(reset - time.time() + 0.999))
    return Problem(429, f"rate limit {item} exceeded for key {api_key.prefix}", headers={"Retry-After": str(retry)})


def rate_limit_hit(*, api_key: ApiKey) -> None:
    """Count one request for `api_key`; 429 with Retry-After when a window is exhausted."""
    limiter = _limiter()
    for item in _items(api_key.rate_limit or settings.MODELPORT_RATE_LIMIT):
        try:
            allowed = limiter.hit(item, str(api_key.pk))
        except redis.RedisError as exc:  # no broker: the call could not be served anyway
            raise Problem(503, f"the serving queue is unavailable: {exc}") from None
        if not allowed:
            raise _refuse(item, api_key)


def rate_limit_account_hit(*, action: str, account_id: int, spec: str) -> None:
    """Count one `action` (e.g. "upload") of account `account_id` against `spec` (the `limits`
    notation, "10/minute;100/hour"). Raises Problem 429 with Retry-After when a window is
    exhausted. While Redis does not answer nothing is counted and nothing refused here: the
    action itself needs Redis (the upload's queue) and refuses with 503 if it is still down."""
    limiter = _limiter()
    identity = f"{action}:{account_id}"
    for item in _items(spec):
        try:
            allowed = limiter.hit(item, identity)
            reset = None if allowed else limiter.get_window_stats(item, identity).reset_time
        except redis.RedisError as exc:
            log.warning("%s rate limit not applied, Redis did not answer: %s", action, exc)
            return
        if reset is not None:
            retry = max(1, int(reset - time.time() + 0.999))
            raise Problem(429, f"{action} rate limit {item} exceeded for this account",
                          headers={"Retry-After": str(retry)})


def rate_limit_queue(pipe: Any, *, key_id: int, spec: str | None) -> list[RateLimitItem]:
    """Add `rate_limit_hit`'s counts for key `key_id` to a Redis pipeline, so that they travel
    with other commands (gateway/authcache.py): the very increments FixedWindowRateLimiter.hit
    makes (the `limits` storage's own script and key names; EVAL, as a pipeline cannot load a
    script). Check the results with `rate_limit_check`."""
    storage = _limiter().storage
    items = _items(spec or settings.MODELPORT_RATE_LIMIT)
    for item in items:
        pipe.eval(storage.lua_incr_expire.script, 1, storage.prefixed_key(item.key_for(str(key_id))),
                  item.get_expiry(), 1)
    return items


def rate_limit_check(items: list[RateLimitItem], counts: list[Any], *, api_key: ApiKey) -> None:
    """429 when a count from `rate_limit_queue` passed its window's limit."""
    for item, count in zip(items, counts, strict=True):
        if int(count) > item.amount:
            raise _refuse(item, api_key)


def rate_limit_keys(*, key_id: int, spec: str | None) -> tuple[tuple[RateLimitItem, ...], tuple[str, ...],
                                                              tuple[int, ...]]:
    """For a script that counts like `rate_limit_hit` (dispatch.ENQUEUE): the items, their
    Redis keys (the `limits` storage's names) and, per item, its expiry and limit."""
    return _rate_limit_keys(key_id, spec or settings.MODELPORT_RATE_LIMIT)


@lru_cache(maxsize=4096)  # per call on the event loop; the answer depends only on these two
def _rate_limit_keys(key_id: int, spec: str) -> tuple[tuple[RateLimitItem, ...], tuple[str, ...], tuple[int, ...]]:
    storage = _limiter().storage
    items = tuple(_items(spec))
    args: list[int] = []
    for item in items:
        args += [item.get_expiry(), item.amount]
    return items, tuple(storage.prefixed_key(item.key_for(str(key_id))) for item in items), tuple(args)


def rate_limit_refusal(item: RateLimitItem, api_key: ApiKey) -> Problem:
    """The 429 for `item` (one Redis read for the window's reset time)."""
    return _refuse(item, api_key)
