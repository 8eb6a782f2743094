"""Operator reads: the worker fleet from heartbeats (Redis hash `<prefix>:workers`)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from django.conf import settings

from modelport.gateway import dispatch
from modelport.registry.models import ModelVersion


@dataclass(frozen=True)
class LoadedVersion:
    version_id: int
    label: str  # "owner/name vN", or "version #id (deleted)"
    disabled: bool
    gpu_memory_limit_mb: int | None


@dataclass(frozen=True)
class FleetWorker:
    """One serving worker as its last heartbeat describes it. Byte counts are bytes."""

    id: str
    host: str
    pid: int | None
    hardware: str
    device: str
    device_name: str
    host_memory_used: int | None
    host_memory_total: int | None
    device_memory_used: int | None
    device_memory_total: int | None
    process_rss: int | None
    cache_host_bytes: int | None
    cache_device_bytes: int | None
    loaded: list[LoadedVersion]
    queue_depths: dict[str, int]
    served: int | None
    last_seen: datetime | None
    age_s: float | None
    stale: bool
    raw: dict[str, Any] = field(repr=False)


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _labels(version_ids: set[int]) -> dict[int, LoadedVersion]:
    rows = (ModelVersion.objects.filter(pk__in=version_ids).select_related("model__owner")
            .only("pk", "number", "disabled", "gpu_memory_limit_mb", "model__name", "model__owner__username"))
    found = {v.pk: LoadedVersion(v.pk, f"{v.model.owner.username}/{v.model.name} v{v.number}", v.disabled,
                                 v.gpu_memory_limit_mb) for v in rows}
    return {vid: found.get(vid) or LoadedVersion(vid, f"version #{vid} (deleted)", False, None)
            for vid in version_ids}


def fleet_workers(*, client: redis.Redis, now: float | None = None) -> list[FleetWorker]:
    """Every worker with a heartbeat in Redis, live ones first, then by host and id.

    A worker is stale when its last heartbeat is older than MODELPORT_WORKER_STALE_S (the web
    tier stops routing to it at the same age). Unparseable entries are skipped. Raises
    redis.RedisError when Redis is unreachable.
    """
    now = time.time() if now is None else now
    beats: list[dict[str, Any]] = []
    for value in client.hgetall(dispatch.workers_key()).values():
        try:
            beat = json.loads(value)
        except ValueError:
            continue
        if isinstance(beat, dict) and beat.get("id"):
            beats.append(beat)
    version_ids = {int(v) for b in beats for v in b.get("loaded") or [] if str(v).isdigit()}
    labels = _labels(version_ids)
    prefix = f"{settings.MODELPORT_REDIS_PREFIX}:"
    workers = []
    for beat in beats:
        ts = beat.get("ts")
        age = now - ts if isinstance(ts, int | float) else None
        depths = {str(q).removeprefix(prefix): int(d) for q, d in (beat.get("queue_depths") or {}).items()}
        workers.append(FleetWorker(
            id=str(beat["id"]), host=str(beat.get("host", "")), pid=_int_or_none(beat.get("pid")),
            hardware=str(beat.get("hardware", "")), device=str(beat.get("device", "")),
            device_name=str(beat.get("device_name", "")),
            host_memory_used=_int_or_none(beat.get("host_memory_used")),
            host_memory_total=_int_or_none(beat.get("host_memory_total")),
            device_memory_used=_int_or_none(beat.get("device_memory_used")),
            device_memory_total=_int_or_none(beat.get("device_memory_total")),
            process_rss=_int_or_none(beat.get("process_rss")),
            cache_host_bytes=_int_or_none(beat.get("cache_host_bytes")),
            cache_device_bytes=_int_or_none(beat.get("cache_device_bytes")),
            loaded=[labels[int(v)] for v in beat.get("loaded") or [] if str(v).isdigit()],
            queue_depths=depths, served=_int_or_none(beat.get("served")),
            last_seen=datetime.fromtimestamp(ts, UTC) if isinstance(ts, int | float) else None,
            age_s=age, stale=age is None or age > settings.MODELPORT_WORKER_STALE_S, raw=beat,
        ))
    workers.sort(key=lambda w: (w.stale, w.host, w.id))
    return workers
