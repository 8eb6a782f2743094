"""Request bodies at the ASGI layer: who may send one, and how much of it is read.

Django's ASGI handler reads a request's whole body (spooled to disk past
FILE_UPLOAD_MAX_MEMORY_SIZE) before any middleware or view runs, so without this layer an
anonymous caller could stream any amount, chunked or not, before its 401. `BodyGuard` wraps
that handler (the inference fast lane, gateway/fastlane.py, caps its own bodies) and, for a
request that carries a body:

- answers 413 at once when Content-Length is over the cap, and as soon as a streamed (chunked)
  body passes it, without reading further: MODELPORT_MAX_UPLOAD_BYTES plus UPLOAD_FORM_MARGIN
  for the two upload endpoints (API and dashboard), MODELPORT_MAX_REQUEST_BYTES for the rest;
- refuses it before reading a byte unless the caller is authenticated, where the endpoint needs
  it: every /api/ path (401 problem+json; an API key must be active, a session must belong to a
  signed-in user) and the dashboard's upload page (a redirect to the login page). The view still
  does the full check (permissions, CSRF); this only decides whether the body is worth reading.

Requests without a body (GET, HEAD, most DELETEs) pass straight through.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from importlib import import_module
from typing import Any
from urllib.parse import quote

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.db import DatabaseError, close_old_connections
from django.http import HttpResponse, HttpResponseRedirect
from django.http.cookie import parse_cookie

from modelport.common.problems import Problem, problem_response

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# Room for an upload's other multipart fields and part headers next to its files.
UPLOAD_FORM_MARGIN = 1024 * 1024
_UPLOAD_PATHS = re.compile(r"^/(?:api/v1/)?models/[^/]+/[^/]+/(?:versions|upload/)$")
_DASHBOARD_UPLOAD = re.compile(r"^/models/[^/]+/[^/]+/upload/$")


def body_cap(path: str) -> int:
    """Bytes of body read for `path` at most."""
    if _UPLOAD_PATHS.match(path):
        return int(settings.MODELPORT_MAX_UPLOAD_BYTES) + UPLOAD_FORM_MARGIN
    return int(settings.MODELPORT_MAX_REQUEST_BYTES)


def _credentials_ok(authorization: str | None, cookie: str | None) -> bool:
    """True when the API key is active, or (without one) the session cookie names a signed-in
    session. One or two indexed queries; runs in a worker thread."""
    from django.contrib.auth import SESSION_KEY

    from modelport.accounts.services import api_key_authenticate, bearer_token

    close_old_connections()
    if authorization is not None:
        token = bearer_token(authorization)
        return token is not None and api_key_authenticate(raw=token) is not None
    session_key = parse_cookie(cookie or "").get(settings.SESSION_COOKIE_NAME)
    if not session_key:
        return False
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    return store.get(SESSION_KEY) is not None


def _refusal(path: str, status: int, detail: str) -> HttpResponse:
    if path.startswith("/api/"):
        headers = {"WWW-Authenticate": 'Bearer realm="modelport"'} if status == 401 else {}
        return problem_response(Problem(status, detail), headers=headers)
    if status == 401:
        return HttpResponseRedirect(f"{settings.LOGIN_URL}?next={quote(path)}")
    return HttpResponse(detail, status=status, content_type="text/plain; charset=utf-8")


class BodyGuard:
    """ASGI wrapper around Django's handler; see the module docstring."""

    def __init__(self, app: ASGIHandler) -> None:
        self.app = app

    async def send_response(self, response: HttpResponse, send: Send) -> None:
        await self.app.send_response(response, send)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length: int | None = None
        chunked = False
        authorization = cookie = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = int(value) if value.isdigit() else None
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"cookie":
                cookie = value.decode("latin-1")
        if not chunked and not length:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        cap = body_cap(path)
        if length is not None and length > cap:
            await self._refuse(send, path, 413, f"request body exceeds {cap} bytes")
            return
        if path.startswith("/api/") or _DASHBOARD_UPLOAD.match(path):
            try:
                ok = await sync_to_async(_credentials_ok, thread_sensitive=False)(authorization, cookie)
            except DatabaseError:
                await self._refuse(send, path, 503, "the database is unavailable; try again shortly")
                return
            if not ok:
                detail = ("invalid or revoked API key" if authorization is not None
                          else "send 'Authorization: Bearer <api key>' (or sign in) before a request body")
                await self._refuse(send, path, 401, detail)
                return
        await self.app(scope, self._capped(receive, send, path, cap), send)

    def _capped(self, receive: Receive, send: Send, path: str, cap: int) -> Receive:
        """`receive` that counts body bytes; past `cap` it answers 413 itself and tells Django
        the client went away (Django then drops the request without a response of its own)."""
        seen = 0

        async def capped_receive() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    await self._refuse(send, path, 413, f"request body exceeds {cap} bytes")
                    return {"type": "http.disconnect"}
            return message

        return capped_receive

    async def _refuse(self, send: Send, path: str, status: int, detail: str) -> None:
        response = _refusal(path, status, detail)
        response["Connection"] = "close"  # the unread rest of the body makes the connection unusable
        response["Content-Length"] = str(len(response.content))
        await self.app.send_response(response, send)
