"""A lean asyncio Redis client for the data plane's one hot exchange (api.call_and_wait).

Each call the web process sends is one Redis round trip: the frame's push (the ENQUEUE script)
and the BLPOP of its reply, pipelined. Through redis-py's asyncio pipeline that round trip took
~200-230 µs here against ~105-140 µs for the same two commands written on an asyncio protocol and
read with hiredis (the parser redis-py itself uses): redis-py's per-pipeline machinery (command
stack, connection pool locks, response callbacks) cost about a tenth of the c=1 latency, on the
web process that is the bottleneck at c=32. This module is that protocol, and nothing else:
commands are encoded as RESP arrays, replies parsed by hiredis.Reader, errors are redis-py's
exception classes (callers handle `redis.RedisError` as for the rest of the client).

A connection carries one exchange at a time (a BLPOP holds it until the reply comes), so each
exchange takes an idle connection or opens one, at most `max_connections` at once; a
connection whose exchange did not end cleanly (timeout, cancelled caller, lost peer) is closed,
never reused. TCP and Unix-socket URLs are supported; `for_url` returns None for the others
(TLS), and the caller keeps redis-py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import hiredis
from redis.asyncio.connection import UnixDomainSocketConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


def encode(*args: bytes | str | int | float) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        else:
            data = repr(arg).encode()  # ints and floats as Redis reads them
        out += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(out)


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._expected = 0
        self._replies: list[Any] = []
        self._waiter: asyncio.Future[list[Any]] | None = None

    # --- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while self._waiter is not None:
            reply = self.reader.gets()
            if reply is False:
                return
            self._replies.append(reply)
            if len(self._replies) == self._expected:
                waiter, self._waiter = self._waiter, None
                if not waiter.done():
                    waiter.set_result(self._replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(RedisConnectionError(f"Redis closed the connection: {exc or 'end of stream'}"))
        self._waiter = None

    # --- exchanges -------------------------------------------------------------------------
    def send(self, payload: bytes, count: int) -> asyncio.Future[list[Any]]:
        assert self.transport is not None
        assert self._waiter is None
        self._expected, self._replies = count, []
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return self._waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future[list[Any]], timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(RedisTimeoutError(f"no answer from Redis within {timeout:.1f} s"))


class LeanRedis:
    def __init__(self, *, host: str | None = None, port: int = 6379, path: str | None = None, db: int = 0,
                 username: str | None = None, password: str | None = None, connect_timeout: float = 5.0,
                 max_connections: int = 512) -> None:
        self.host, self.port, self.path, self.db = host, port, path, db
        self.username, self.password = username, password
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self._idle: list[_Connection] = []
        self._in_use = 0

    @classmethod
    def for_url(cls, url: str, **kwargs: Any) -> LeanRedis | None:
        """A client for `url` (redis:// or unix://), or None for what this client does not speak (TLS)."""
        options = parse_url(url)
        if options.pop("connection_class", None) not in (None, UnixDomainSocketConnection):
            return None  # TLS (SSLConnection)
        if set(options) - {"host", "port", "path", "db", "username", "password"}:
            return None  # options this client would ignore (e.g. socket settings in the query string)
        return cls(**options, **kwargs)

    async def execute(self, *commands: tuple[Any, ...], timeout: float) -> list[Any]:
        """Send `commands` in one write and return their replies, in order. Raises the first
        error reply as ResponseError (as redis-py's pipelines do), ConnectionError when the
        connection fails and TimeoutError when no complete answer came within `timeout` s."""
        connection = await self._take()
        clean = False
        try:
            replies = await self._exchange(connection, commands, timeout)
            clean = True
        finally:
            self._give_back(connection, reuse=clean)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    def close(self) -> None:
        """Close the idle connections (those in an exchange close when it ends)."""
        while self._idle:
            self._idle.pop().close()

    @staticmethod
    async def _exchange(connection: _Connection, commands: tuple[tuple[Any, ...], ...], timeout: float) -> list[Any]:
        try:
            waiter = connection.send(b"".join(encode(*c) for c in commands), len(commands))
        except (OSError, RuntimeError) as exc:  # the transport failed or is closing
            raise RedisConnectionError(f"cannot write to Redis: {exc!r}") from None
        expiry = asyncio.get_running_loop().call_later(timeout, _expire, waiter, timeout)
        try:
            return await waiter
        finally:
            expiry.cancel()

    async def _take(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                self._in_use += 1
                return connection
        if self._in_use >= self.max_connections:
            raise RedisConnectionError("too many connections")
        self._in_use += 1
        try:
            return await self._connect()
        except BaseException:
            self._in_use -= 1
            raise

    def _give_back(self, connection: _Connection, *, reuse: bool) -> None:
        self._in_use -= 1
        if reuse and not connection.closed and len(self._idle) < self.max_connections:
            self._idle.append(connection)
        else:
            connection.close()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            if self.path is not None:
                opening = loop.create_unix_connection(_Connection, self.path)
            else:
                opening = loop.create_connection(_Connection, self.host or "localhost", self.port)
            _, connection = await asyncio.wait_for(opening, self.connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc!r}") from None
        setup = []
        if self.password is not None:
            setup.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
        if self.db:
            setup.append(("SELECT", self.db))
        if setup:
            try:
                replies = await self._exchange(connection, tuple(setup), self.connect_timeout)
            except BaseException:
                connection.close()
                raise
            for reply in replies:
                if isinstance(reply, ResponseError):
                    connection.close()
                    raise RedisConnectionError(f"Redis refused the connection's setup: {reply}")
        return connection
