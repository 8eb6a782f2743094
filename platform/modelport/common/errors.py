"""Error pages for API paths: JSON, never Django's HTML pages.

/api/… answers problem+json (CONTRACT §2); /v2/… answers `{"error": …}` (CONTRACT §5).
"""

from __future__ import annotations

import json
import logging

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.deprecation import MiddlewareMixin

from modelport.common.problems import Problem, problem_response

log = logging.getLogger(__name__)


def json_error(request: HttpRequest, status: int, message: str) -> HttpResponse | None:
    if request.path.startswith("/v2"):
        return HttpResponse(json.dumps({"error": message}), status=status, content_type="application/json")
    if request.path.startswith("/api/"):
        return problem_response(Problem(status, message))
    return None


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return json_error(request, 404, f"no such endpoint: {request.path}") or render(
        request, "404.html", status=404)


def handler500(request: HttpRequest) -> HttpResponse:
    return json_error(request, 500, "internal error; the request changed nothing it could not undo") or render(
        request, "500.html", status=500)


class JsonErrorsMiddleware(MiddlewareMixin):
    """Turns an exception escaping an API view into a JSON 500 (logged with its traceback) and a
    too-large body into a 413. MiddlewareMixin keeps it async-capable: a sync-only middleware
    would push every async view through one shared thread."""

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        from django.core.exceptions import RequestDataTooBig

        if isinstance(exception, RequestDataTooBig):
            return json_error(request, 413, "request body too large")
        if isinstance(exception, Problem):
            return json_error(request, exception.status, exception.detail)
        log.exception("unhandled error on %s", request.path, exc_info=exception)
        return json_error(request, 500, "internal error")
