"""RFC 9457 problem+json errors for the native API (CONTRACT §2).

Views raise `Problem` (or DRF exceptions); both end up as `application/problem+json` with
`type`, `title`, `status`, `detail` and optional extra fields such as `errors`.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from django.http import HttpResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler

PROBLEM_CONTENT_TYPE = "application/problem+json"


class Problem(Exception):
    """An error the API reports to the caller as problem+json."""

    def __init__(self, status: int, detail: str, *, type_: str | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.headers = headers or {}
        self.status = status
        self.detail = detail
        self.type = type_ or f"https://modelport.dev/problems/{HTTPStatus(status).phrase.lower().replace(' ', '-')}"
        self.extra = extra

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "title": HTTPStatus(self.status).phrase,
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }


def problem_response(problem: Problem, headers: dict[str, str] | None = None) -> HttpResponse:
    response = HttpResponse(
        json.dumps(problem.as_dict()), status=problem.status, content_type=PROBLEM_CONTENT_TYPE
    )
    for key, value in {**problem.headers, **(headers or {})}.items():
        response[key] = value
    return response


def _flatten_errors(data: Any) -> str:
    if isinstance(data, dict):
        parts = [f"{key}: {_flatten_errors(value)}" for key, value in data.items()]
        return "; ".join(parts)
    if isinstance(data, list):
        return " ".join(_flatten_errors(item) for item in data)
    return str(data)


def drf_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Render DRF and `Problem` exceptions as problem+json."""
    if isinstance(exc, Problem):
        return Response(exc.as_dict(), status=exc.status, content_type=PROBLEM_CONTENT_TYPE, headers=exc.headers)
    response = exception_handler(exc, context)
    if response is None:
        return None
    status = response.status_code
    if isinstance(exc, drf_exceptions.ValidationError):
        problem = Problem(status, _flatten_errors(exc.detail), errors=exc.detail)
    elif isinstance(exc, drf_exceptions.NotAuthenticated | drf_exceptions.AuthenticationFailed):
        problem = Problem(401, str(getattr(exc, "detail", exc)))
        status = 401
    else:
        problem = Problem(status, _flatten_errors(getattr(exc, "detail", str(exc))))
    headers = {k: v for k, v in response.items() if k.lower() in {"www-authenticate", "retry-after"}}
    if status == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="modelport"')
    return Response(problem.as_dict(), status=status, content_type=PROBLEM_CONTENT_TYPE, headers=headers)
