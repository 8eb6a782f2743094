"""Web-tier request metrics (see ops/metrics.py for the series)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

from modelport.ops import metrics


def _labels(request: HttpRequest) -> tuple[str, str]:
    method = request.method if request.method in metrics.HTTP_METHODS else "other"
    match = getattr(request, "resolver_match", None)
    return method or "other", (match.route if match is not None else metrics.UNMATCHED_ROUTE)


class MetricsMiddleware:
    """Counts and times every request by method, route pattern and status.

    Sync and async capable without thread hops (see common/logging.RequestLogMiddleware for why
    not MiddlewareMixin). The route is known only after URL resolution, i.e. once the inner
    handler returns, so labels are taken then.
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
        in_progress = metrics.http_requests_in_progress.labels(_labels(request)[0])
        started = time.perf_counter()
        with in_progress.track_inprogress():
            response = self.get_response(request)
        self._finish(request, response, started)
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        in_progress = metrics.http_requests_in_progress.labels(_labels(request)[0])
        started = time.perf_counter()
        with in_progress.track_inprogress():
            response = await self.get_response(request)
        self._finish(request, response, started)
        return response

    @staticmethod
    def _finish(request: HttpRequest, response: HttpResponse, started: float) -> None:
        observe(request, response.status_code, time.perf_counter() - started)


def observe(request: HttpRequest, status: int, elapsed_s: float) -> None:
    """Count and time one finished request (also used by gateway/fastlane.py, which skips the
    middleware stack)."""
    method, route = _labels(request)
    metrics.http_request_duration.labels(method, route).observe(elapsed_s)
    metrics.http_requests.labels(method, route, str(status)).inc()

    def process_exception(self, request: HttpRequest, exception: Exception) -> None:
        metrics.http_exceptions.labels(_labels(request)[1], type(exception).__name__).inc()
