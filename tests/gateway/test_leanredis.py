"""The data plane's lean Redis client (gateway/leanredis.py) against the real Redis server."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import uvloop
from django.conf import settings
from modelport.gateway.leanredis import LeanRedis, encode
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


@pytest.fixture
def keys() -> Iterator[tuple[redis.Redis, str]]:
    """(a blocking client on REDIS_URL, a key prefix of this test's own); its keys are removed after."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    prefix = f"leantest:{uuid.uuid4().hex[:8]}"
    yield client, prefix
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)


_clients: list[LeanRedis] = []


def run(coro: Any) -> Any:
    """`coro` on a uvloop event loop of its own, as the web process runs (uvicorn); the
    clients made by lean() are closed before the loop."""
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        while _clients:
            _clients.pop().close()
        loop.run_until_complete(asyncio.sleep(0))  # the transports' close callbacks
        loop.close()


def lean(url: str | None = None, **kwargs: Any) -> LeanRedis:
    client = LeanRedis.for_url(url or settings.REDIS_URL, **kwargs)
    assert client is not None
    _clients.append(client)
    return client


def test_encode_writes_resp_arrays_of_bulk_strings():
    assert encode("SET", b"k\r\n", 3, 0.5) == b"*4\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$1\r\n3\r\n$3\r\n0.5\r\n"


def test_push_and_blocking_pop_in_one_exchange_on_the_url_database(keys):
    client, prefix = keys
    frame = bytes(range(256)) * 4096  # 1 MiB, every byte value: binary-safe both ways

    async def main() -> tuple[list[Any], list[Any], int]:
        c = lean()
        first = await c.execute(("RPUSH", f"{prefix}:q", frame), ("BLPOP", f"{prefix}:q", 1.0), timeout=5)
        second = await c.execute(("RPUSH", f"{prefix}:q", b"x"), ("LLEN", f"{prefix}:q"), timeout=5)
        return first, second, len(c._idle)

    first, second, idle = run(main())
    assert first == [1, [f"{prefix}:q".encode(), frame]]
    assert second == [1, 1]
    assert idle == 1  # one connection, reused
    assert client.lrange(f"{prefix}:q", 0, -1) == [b"x"]  # the same database as redis-py's for the URL


def test_a_blocking_pop_that_times_out_answers_none(keys):
    _, prefix = keys
    assert run(lean().execute(("BLPOP", f"{prefix}:empty", 0.05), timeout=5)) == [None]


def test_an_error_reply_raises_and_the_connection_stays_usable(keys):
    _, prefix = keys

    async def main() -> tuple[str, list[Any]]:
        c = lean()
        with pytest.raises(ResponseError) as raised:
            await c.execute(("SET", f"{prefix}:k", "v"), ("EVAL", "return redis.call('NOPE')", 0), timeout=5)
        return str(raised.value), await c.execute(("GET", f"{prefix}:k"), timeout=5)

    message, after = run(main())
    assert "NOPE" in message or "Unknown" in message
    assert after == [b"v"]  # the commands before the error ran; the connection still answers


def test_no_answer_in_time_raises_and_the_connection_is_not_reused(keys):
    _, prefix = keys

    async def main() -> tuple[int, int]:
        c = lean()
        with pytest.raises(RedisTimeoutError):
            await c.execute(("BLPOP", f"{prefix}:never", 5), timeout=0.2)
        return len(c._idle), c._in_use

    assert run(main()) == (0, 0)


def test_a_cancelled_caller_closes_its_connection(keys):
    _, prefix = keys

    async def main() -> tuple[int, int, list[Any]]:
        c = lean()
        task = asyncio.ensure_future(c.execute(("BLPOP", f"{prefix}:never", 5), timeout=10))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        idle, in_use = len(c._idle), c._in_use
        return idle, in_use, await c.execute(("PING",), timeout=5)

    assert run(main()) == (0, 0, [b"PONG"])


def test_an_unreachable_server_raises_connection_error():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = lean(f"redis://127.0.0.1:{port}/0", connect_timeout=2)
    with pytest.raises(RedisConnectionError):
        run(client.execute(("PING",), timeout=1))
    assert client._in_use == 0


def test_urls_it_does_not_speak_are_left_to_redis_py():
    assert LeanRedis.for_url("rediss://127.0.0.1:6380/0") is None
    unix = LeanRedis.for_url("unix:///run/redis.sock?db=2")
    assert unix is not None and (unix.path, unix.db) == ("/run/redis.sock", 2)
    auth = LeanRedis.for_url("redis://user:secret@127.0.0.1:6379/3")
    assert auth is not None and (auth.username, auth.password, auth.db) == ("user", "secret", 3)


def test_a_refused_password_fails_the_connection():
    client = lean(settings.REDIS_URL.replace("redis://", "redis://:wrong-password@", 1))
    with pytest.raises(RedisConnectionError, match="refused"):
        run(client.execute(("PING",), timeout=2))
