"""Structured logs and the request id.

A request id names one call from the web tier into the worker: `RequestLogMiddleware` takes it
from `X-Request-Id` (or makes one), keeps it in a context variable for the request's duration,
returns it in the response's `X-Request-Id`, and writes one access line per request. Every log
record gets `record.request_id` from `RequestIdFilter` (attach it to handlers, see settings.LOGGING),
so any line logged while serving a request names it. Outside a request the id is "-".

Other processes carry it the same way: the serving loop wraps each call in
`with request_id_bound(header.get("request_id")): ...` and everything it logs meanwhile carries
the id. Context variables are per thread and per asyncio task, so concurrent requests (async
views, `sync_to_async` threads) never see each other's id.

`JsonFormatter` (chosen by MODELPORT_LOG_JSON=1) writes one JSON object per line.
"""

from __future__ import annotations

import json
import logging
import re
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID_META = "HTTP_" + REQUEST_ID_HEADER.upper().replace("-", "_")  # reading META skips building request.headers
# What we accept from a client: short and printable, so it can go into a log line, a response
# header and Prediction.request_id (max 64 characters) as it is. Anything else is replaced.
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
NO_REQUEST_ID = "-"

_request_id: ContextVar[str] = ContextVar("modelport_request_id", default="")

access_log = logging.getLogger("modelport.request")


# --- the request id ------------------------------------------------------------------------------
def new_request_id() -> str:
    return uuid.uuid4().hex


def clean_request_id(raw: str | None) -> str | None:
    """`raw` if it is an acceptable request id (1-64 of [A-Za-z0-9._:-]), else None."""
    if raw and _REQUEST_ID_RE.match(raw):
        return raw
    return None


def current_request_id() -> str:
    """The id of the request (or worker call) being handled in this context; "" outside one."""
    return _request_id.get()


def bind_request_id(value: str | None) -> Token[str]:
    """Set the current id (an unacceptable or empty value becomes a fresh id). Undo with
    `unbind_request_id(token)`; prefer `request_id_bound` where a `with` block fits."""
    return _request_id.set(clean_request_id(value) or new_request_id())


def unbind_request_id(token: Token[str]) -> None:
    _request_id.reset(token)


@contextmanager
def request_id_bound(value: str | None) -> Iterator[str]:
    """Bind `value` (or a fresh id if it is missing or unacceptable) for the block; yields the id."""
    token = bind_request_id(value)
    try:
        yield _request_id.get()
    finally:
        _request_id.reset(token)


# --- logging plumbing ----------------------------------------------------------------------------
class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record (never drops one). Attach it to handlers, not loggers:
    a handler filter sees the records propagated from every logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = _request_id.get() or NO_REQUEST_ID
        return True


# Attributes every LogRecord has; anything else on a record came from `extra=` and is emitted.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime",
                                                                                   "request_id", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC ISO 8601), level, logger, message, request_id, the
    record's `extra` fields, and `exc` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or _request_id.get() or None,
            "process": record.process,
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            data["exc"] = record.exc_text
        return json.dumps(data, default=str, ensure_ascii=False)


# --- middleware ----------------------------------------------------------------------------------
class RequestLogMiddleware:
    """Binds the request id and writes one access line per request (logger `modelport.request`).

    Sync and async capable without thread hops: under ASGI it awaits the next handler directly.
    (`MiddlewareMixin` would run process_request/process_response through the one shared sync
    thread for every async request.) Put it first in MIDDLEWARE so everything below logs with
    the id.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self.is_async:
            return self.__acall__(request)
        with request_id_bound(request.headers.get(REQUEST_ID_HEADER)) as request_id:
            started = time.perf_counter()
            response = self.get_response(request)
            self._finish(request, response, request_id, started)
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        with request_id_bound(request.headers.get(REQUEST_ID_HEADER)) as request_id:
            started = time.perf_counter()
            response = await self.get_response(request)
            self._finish(request, response, request_id, started)
        return response

    @staticmethod
    def _finish(request: HttpRequest, response: HttpResponse, request_id: str, started: float) -> None:
        response.headers[REQUEST_ID_HEADER] = request_id
        log_access(request, response.status_code, (time.perf_counter() - started) * 1000.0)


def log_access(request: HttpRequest, status: int, duration_ms: float, **extra: Any) -> None:
    """One access line (also written by gateway/fastlane.py, which skips the middleware stack)."""
    match = getattr(request, "resolver_match", None)
    access_log.info(
        "%s %s %s %.1fms", request.method, request.path, status, duration_ms,
        extra={"method": request.method, "path": request.path, "status": status,
               "duration_ms": round(duration_ms, 3), "route": match.route if match else None, **extra},
    )
