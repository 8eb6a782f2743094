"""The data plane: how a call reaches a serving worker and how its answer comes back.

Celery's message costs ~3.5 CPU-ms (FINDINGS), so inference bypasses it: the web tier RPUSHes a
`workers.wire` frame onto a Redis list and BLPOPs the reply list named in the frame.

Keys (all under MODELPORT_REDIS_PREFIX):
- `q:v<version_id>`  calls for a version, popped by workers that have it loaded;
- `q:cold`           calls for versions no live worker has loaded (any worker pops, loads);
- `reply:<prediction_id>` one reply frame, expiring;
- `journal:<worker_id>` the rows of the postpaid calls a worker last answered, written with
  their replies and before their rows (serving.ServingLoop._record): the reaper records them
  if the worker died in between, and a reader that finds no row for a call in it waits;
- `workers`          hash worker-id → heartbeat JSON (host, device, memory, loaded versions…).
"""

from __future__ import annotations

import json
import time
from functools import lru_cache
from typing import Any

import redis
from django.conf import settings

REPLY_TTL_S = 300
JOURNAL_TTL_S = 3600


@lru_cache(maxsize=1)
def sync_redis() -> redis.Redis:
    """The web process's blocking Redis client (queue depths, readiness), one pool per process."""
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)


def key(*parts: str) -> str:
    return ":".join((settings.MODELPORT_REDIS_PREFIX, *parts))


def version_queue(version_id: int) -> str:
    return key("q", f"v{version_id}")


def cold_queue() -> str:
    return key("q", "cold")


def reply_key(prediction_id: str) -> str:
    return key("reply", prediction_id)


def journal_key(worker_id: str) -> str:
    return key("journal", worker_id)


def workers_key() -> str:
    return key("workers")


# Sends a call whose resolution the web process took from its cache (api.call_and_wait): in one
# atomic step it checks that the resolution generation is still the one the row was read under,
# counts the key's rate limits (the `limits` fixed-window increments, same keys), checks the
# version's queue bound and pushes the frame. When it refuses, it pushes a marker ("!stale",
# "!rate:<item>", "!full:<depth>") to the call's reply list instead, so that the BLPOP pipelined
# after it returns at once.
# KEYS: generation, queue, reply, rate-limit keys…; ARGV: generation read, max queue, frame,
# reply TTL, then expiry and limit per rate-limit key.
ENQUEUE = """
local function refuse(why)
    redis.call('RPUSH', KEYS[3], why)
    redis.call('EXPIRE', KEYS[3], ARGV[4])
    return why
end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return refuse('!stale')
end
for i = 4, #KEYS do
    local at = 5 + (i - 4) * 2
    local count = redis.call('INCRBY', KEYS[i], 1)
    if count == 1 then
        redis.call('EXPIRE', KEYS[i], ARGV[at])
    end
    if count > tonumber(ARGV[at + 1]) then
        return refuse('!rate:' .. (i - 4))
    end
end
local depth = redis.call('LLEN', KEYS[2])
if depth >= tonumber(ARGV[2]) then
    return refuse('!full:' .. depth)
end
redis.call('RPUSH', KEYS[2], ARGV[3])
return 'ok'
"""


# Whether a prediction id is in any of the journals KEYS (ARGV[1]: the id, quoted as in JSON).
IN_JOURNALS = """
for i = 1, #KEYS do
    local journal = redis.call('GET', KEYS[i])
    if journal and string.find(journal, ARGV[1], 1, true) then
        return 1
    end
end
return 0
"""


def being_recorded(client: redis.Redis, prediction_id: str) -> bool:
    """Whether a serving worker answered the call `prediction_id` and has not written its row
    yet (it is in the worker's journal; a journal's calls whose rows exist are not asked about)."""
    workers = [w.decode() for w in client.hkeys(workers_key())]
    if not workers:
        return False
    return bool(client.eval(IN_JOURNALS, len(workers), *[journal_key(w) for w in workers], f'"{prediction_id}"'))


def live_workers(raw: dict[bytes | str, bytes | str], *, now: float | None = None) -> list[dict[str, Any]]:
    now = time.time() if now is None else now
    out = []
    for value in raw.values():
        beat = json.loads(value)
        beat["stale"] = now - beat.get("ts", 0) > settings.MODELPORT_WORKER_STALE_S
        out.append(beat)
    return out


class Router:
    """Chooses the queue for a version from recent heartbeats (cached briefly per process)."""

    def __init__(self, ttl_s: float = 0.5) -> None:
        self.ttl_s = ttl_s
        self._fetched = 0.0
        self._hosting: dict[int, int] = {}

    def needs_refresh(self) -> bool:
        return time.monotonic() - self._fetched > self.ttl_s

    def refresh(self, raw: dict[Any, Any]) -> None:
        hosting: dict[int, int] = {}
        for beat in live_workers(raw):
            if beat["stale"]:
                continue
            for vid in beat.get("loaded", []):
                hosting[int(vid)] = hosting.get(int(vid), 0) + 1
        self._hosting = hosting
        self._fetched = time.monotonic()

    def queue_for(self, version_id: int) -> str:
        return version_queue(version_id) if self._hosting.get(version_id) else cold_queue()
