"""Operations endpoints: readiness, Prometheus metrics, and the admin's worker fleet page."""

from __future__ import annotations

import hmac
import json

import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages
from django.contrib.admin import site as admin_site
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.views.decorators.http import require_http_methods
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from modelport.accounts.services import api_key_authenticate, bearer_token
from modelport.gateway.v2 import server_ready
from modelport.ops import metrics as metrics_module
from modelport.ops import selectors, services


def _json(status: int, data: dict) -> HttpResponse:
    return HttpResponse(json.dumps(data), status=status, content_type="application/json")


async def readyz(request: HttpRequest) -> HttpResponse:
    """200 {"ready": true} when the database and the broker (Redis) answer, else 503. For load
    balancers and compose health checks; /healthz only says the process is up."""
    ready = await sync_to_async(server_ready, thread_sensitive=False)()
    return _json(200, {"ready": True}) if ready else _json(503, {"ready": False})


def _metrics_bearer_allowed(header: str | None) -> bool:
    """`Authorization: Bearer <MODELPORT_METRICS_TOKEN>` (for Prometheus) or a staff API key."""
    token = bearer_token(header)
    if token is None:
        return False
    configured = settings.MODELPORT_METRICS_TOKEN
    if configured and hmac.compare_digest(token.encode(), configured.encode()):
        return True
    key = api_key_authenticate(raw=token)
    return key is not None and key.user.is_staff


async def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition of this web process's metrics.

    Never open on the public listener: allowed for a staff session, a staff API key, or the
    scrape token MODELPORT_METRICS_TOKEN. Anonymous or bad credentials: 401; a non-staff user: 403.
    """
    header = request.headers.get("Authorization")
    if header:
        allowed = await sync_to_async(_metrics_bearer_allowed, thread_sensitive=False)(header)
        if not allowed:
            return _unauthorized()
    else:
        user = await request.auser()
        if not user.is_authenticated:
            return _unauthorized()
        if not user.is_staff:
            return _json(403, {"error": "metrics are for staff"})
    # In a thread: the exposition reads the data plane's queue depths from Redis (ServingQueues).
    metrics_module.serving_queues_register()
    body = await sync_to_async(generate_latest, thread_sensitive=False)(REGISTRY)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)


def _unauthorized() -> HttpResponse:
    response = _json(401, {"error": "send a staff session, a staff API key or the metrics token"})
    response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


@require_http_methods(["GET", "POST"])
def fleet(request: HttpRequest) -> HttpResponse:
    """The worker fleet (admin page; wrap with `admin.site.admin_view`, which requires staff).

    POST forget_stale removes heartbeats of workers that stopped without removing their own.
    """
    if request.method == "POST":
        try:
            removed = services.stale_workers_forget(actor=request.user)
        except redis.RedisError as exc:
            messages.error(request, f"Redis is unreachable: {exc}")
        else:
            messages.success(request, f"Forgot {len(removed)} stale worker(s).")
        return HttpResponseRedirect(request.path)
    error = None
    workers: list[selectors.FleetWorker] = []
    try:
        workers = selectors.fleet_workers(client=services.redis_client())
    except redis.RedisError as exc:
        error = f"Redis is unreachable: {exc}"
    context = {
        **admin_site.each_context(request),
        "title": "Worker fleet",
        "workers": workers,
        "live_count": sum(not w.stale for w in workers),
        "stale_count": sum(w.stale for w in workers),
        "stale_after_s": settings.MODELPORT_WORKER_STALE_S,
        "error": error,
    }
    return TemplateResponse(request, "ops/fleet.html", context)
