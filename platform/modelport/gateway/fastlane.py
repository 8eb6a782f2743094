"""The inference fast lane: API-key calls to the data-plane endpoints skip Django's middleware.

Under ASGI every `MiddlewareMixin` middleware (session, CSRF, auth, messages, security…) runs
its hooks through a thread hop, and Django starts a thread per request for them; measured here
that cost ~4 ms per request, 20x onnxruntime's own time on a small model. The endpoints routed
here need none of it: they authenticate by API key (no session, so no CSRF), answer JSON, and
do their own input checks. Calls without `Authorization` (the dashboard's session calls) take
the normal path. What the skipped middleware would have added — request id, access log,
metrics, JSON errors — is done here too.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponse
from django.urls import Resolver404, resolve

from modelport.common.bodyguard import BodyGuard
from modelport.common.errors import json_error
from modelport.common.logging import REQUEST_ID_HEADER, REQUEST_ID_META, log_access, request_id_bound
from modelport.ops.middleware import observe

log = logging.getLogger(__name__)
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _fast_views() -> set[Any]:
    from modelport.gateway import api, v2

    return {api.prediction_create, v2.infer, v2.model_ready, v2.model_metadata, v2.health_live, v2.health_ready,
            v2.server_metadata}


class FastLane:
    def __init__(self, django_app: BodyGuard) -> None:
        self.django_app = django_app
        self._views: set[Any] | None = None
        self._executor_set = False
        self._routes: dict[str, Any] = {}

    def _ensure_executor(self) -> None:
        """The admission step of a call is blocking database and Redis I/O run in the loop's
        default executor (sync_to_async(thread_sensitive=False)); asyncio's default of
        cpu_count + 4 threads caps concurrent admissions at 6 on this machine, so size it."""
        if not self._executor_set:
            asyncio.get_running_loop().set_default_executor(
                ThreadPoolExecutor(max_workers=settings.MODELPORT_WEB_THREADS, thread_name_prefix="mp-admit"))
            self._executor_set = True

    def route(self, scope: dict[str, Any]) -> Any | None:
        """The view for this scope if it may take the fast lane, else None."""
        if scope["type"] != "http":
            return None
        path = scope["path"]
        if not (path.startswith("/v2") or (path.startswith("/api/v1/models/") and path.endswith("/predictions"))):
            return None
        if not path.startswith("/v2") and not any(k == b"authorization" for k, _ in scope["headers"]):
            return None  # a dashboard (session) call: needs the session and CSRF middleware
        match = self._routes.get(path)
        if match is None:
            try:
                match = resolve(path)
            except Resolver404:
                return None
            if len(self._routes) >= 10_000:
                self._routes.clear()
            self._routes[path] = match  # ResolverMatch is read-only here; resolving cost ~4% of a call
        if self._views is None:
            self._views = _fast_views()
        return match if match.func in self._views else None

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        self._ensure_executor()
        match = self.route(scope)
        if match is None:
            await self.django_app(scope, receive, send)
            return
        started = time.perf_counter()
        # Every fast-lane view with a body needs an API key: without one the body is not read.
        # Native calls come here only with Authorization (route); V2 calls with or without it
        # (the scan costs ~1 µs on a ~2 ms call).
        anonymous = (scope["method"] == "POST" and scope["path"].startswith("/v2")
                     and not any(k == b"authorization" for k, _ in scope["headers"]))
        body = b"" if anonymous else await self._read_body(receive)
        request = ASGIRequest(scope, io.BytesIO(body or b""))
        request.resolver_match = match
        with request_id_bound(request.META.get(REQUEST_ID_META)) as request_id:
            if anonymous:
                response = json_error(request, 401, "send 'Authorization: Bearer <api key>'")
            elif body is None:
                response = json_error(request, 413, "request body too large")
            else:
                try:
                    response = await match.func(request, *match.args, **match.kwargs)
                except Exception:  # last resort: JSON, never Django's HTML page
                    log.exception("unhandled error on %s", request.path)
                    response = json_error(request, 500, "internal error")
            assert isinstance(response, HttpResponse)
            if anonymous:
                response["Connection"] = "close"  # the unread body makes the connection unusable
            response[REQUEST_ID_HEADER] = request_id
            elapsed = time.perf_counter() - started
            # The response first: the metrics and the access line are off the caller's wait.
            await self.django_app.send_response(response, send)
            observe(request, response.status_code, elapsed)
            log_access(request, response.status_code, elapsed * 1000.0, lane="fast")

    @staticmethod
    async def _read_body(receive: Receive) -> bytes | None:
        """The whole body, or None once it passes MODELPORT_MAX_REQUEST_BYTES."""
        limit = settings.MODELPORT_MAX_REQUEST_BYTES
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b""
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
