"""Prediction webhooks: Standard-Webhooks-style signatures, retries with backoff, a dead letter.

Signature (CONTRACT §4): headers `webhook-id`, `webhook-timestamp`, `webhook-signature` =
`v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>`, where the key is the base64 part
of the account's `whsec_…` secret.

Targets must resolve to public addresses (`is_global`: no loopback, private, link-local,
shared, metadata, multicast or reserved ranges, nor an IPv6 address embedding such an IPv4
address: IPv4-mapped, IPv4-compatible, 6to4, Teredo, NAT64) unless
MODELPORT_WEBHOOK_ALLOW_PRIVATE is set (development only). The name is resolved once per
attempt and the request goes to that address (Host/SNI keep the name), so a DNS answer cannot
change between the check and the connection. Redirects are never followed: a 3xx is a failed
attempt.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from modelport.accounts.models import WebhookSecret
from modelport.common.problems import Problem
from modelport.gateway.models import Prediction, WebhookAttempt, WebhookDelivery

EVENTS = ("start", "completed")
EXCERPT = 500
# Of a receiver's reply only this much is read (then the connection is closed): enough for the
# excerpt, and a reply of any size costs the delivering worker no more memory than this.
RESPONSE_READ_LIMIT = 64 * 1024
_resolver = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mp-webhook-dns")


class WebhookTargetError(ValueError):
    pass


@dataclass(frozen=True)
class Target:
    url: str  # with the resolved address in place of the host name
    host: str
    scheme: str


def secret_for(*, user: Any) -> str:
    return WebhookSecret.objects.get_or_create(user=user)[0].secret


def sign(*, secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


METADATA_ADDRESSES = frozenset({"169.254.169.254", "fd00:ec2::254", "100.100.100.200"})
NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries and may be routed to: IPv4-mapped
    (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d), 6to4 (2002:AABB:CCDD::/48), Teredo
    (2001:0::/32, server and de-obfuscated client) and NAT64 (64:ff9b::/96)."""
    found = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if ip in NAT64 or int(ip) >> 32 == 0:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def _forbidden(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True unless `ip` and every IPv4 address embedded in it are globally routable unicast
    addresses (`is_global`, and not multicast, reserved or a cloud metadata address)."""
    if (not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified or ip.is_loopback
            or ip.is_link_local or str(ip) in METADATA_ADDRESSES
            or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local)):
        return True
    return isinstance(ip, ipaddress.IPv6Address) and any(_forbidden(v4) for v4 in _embedded_ipv4(ip))


def resolve_target(url: str) -> Target:
    """Check `url` and resolve it once. Raises WebhookTargetError with the reason."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookTargetError("webhook must be an http(s) URL with a host")
    if parts.username or parts.password:
        raise WebhookTargetError("webhook URL must not carry credentials")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise WebhookTargetError(f"webhook host {parts.hostname!r} does not resolve: {exc}") from None
    ip = ipaddress.ip_address(infos[0][4][0])
    if _forbidden(ip) and not settings.MODELPORT_WEBHOOK_ALLOW_PRIVATE:
        raise WebhookTargetError(f"webhook host resolves to {ip}, a non-public address")
    netloc = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
    return Target(url=urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")),
                  host=parts.netloc.rsplit("@", 1)[-1], scheme=parts.scheme)


def check_request(*, webhook: Any, events: Any) -> tuple[str, list[str]]:
    """Validate the webhook fields of a create request (400 with the reason)."""
    if webhook in (None, ""):
        return "", []
    if not isinstance(webhook, str) or len(webhook) > 1000:
        raise Problem(400, "webhook must be a URL string", errors={"webhook": ["invalid"]})
    try:
        resolve_target(webhook)
    except WebhookTargetError as exc:
        raise Problem(400, str(exc), errors={"webhook": [str(exc)]}) from None
    if events is None:
        events = list(EVENTS)
    if not isinstance(events, list) or any(e not in EVENTS for e in events):
        raise Problem(400, f"webhook_events_filter must be a list of {list(EVENTS)}",
                      errors={"webhook_events_filter": ["invalid"]})
    return webhook, sorted(set(events), key=EVENTS.index)


def deliveries_enqueue(*, prediction: Prediction, event: str) -> WebhookDelivery | None:
    """Record a delivery of `event` and send it after the current transaction commits."""
    if not prediction.webhook or event not in (prediction.webhook_events or []):
        return None
    delivery = WebhookDelivery.objects.create(prediction=prediction, event=event, url=prediction.webhook)
    transaction.on_commit(lambda: _send_later(delivery.pk, 0))
    return delivery


def delivery_resend(*, prediction: Prediction) -> WebhookDelivery:
    if not prediction.webhook:
        raise Problem(409, "this prediction has no webhook")
    event = "completed" if prediction.status in Prediction.TERMINAL else "start"
    delivery = WebhookDelivery.objects.create(prediction=prediction, event=event, url=prediction.webhook)
    transaction.on_commit(lambda: _send_later(delivery.pk, 0))
    return delivery


def _send_later(delivery_id: int, countdown: float) -> None:
    from modelport.gateway.tasks import webhook_deliver

    webhook_deliver.apply_async((delivery_id,), countdown=countdown)


def backoff_s(attempt: int) -> float:
    return float(settings.MODELPORT_WEBHOOK_BACKOFF_S) * (2 ** (attempt - 1))


async def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int, str | None, bytes]:
    """POST `body` to `url`: (status, Location, the first RESPONSE_READ_LIMIT bytes of the reply).

    `timeout` bounds the whole exchange (resolving the name, connecting, sending, the status
    line and headers, and reading the reply), not each read: a receiver that trickles its reply
    byte by byte is cut off at the deadline (TimeoutError). The reply is read raw (no
    decompression, `accept-encoding: identity`), so its stated size is what is read.
    """
    async with asyncio.timeout(timeout):
        # getaddrinfo blocks: it runs on a pool of our own, which asyncio.run does not wait for
        # (it joins only the default executor), so a slow resolver is bounded too.
        target = await asyncio.get_running_loop().run_in_executor(_resolver, resolve_target, url)
        extensions = {"sni_hostname": target.host.split(":")[0]} if target.scheme == "https" else {}
        headers = {**headers, "host": target.host, "accept-encoding": "identity"}
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            request = client.build_request("POST", target.url, content=body, headers=headers, extensions=extensions)
            response = await client.send(request, stream=True)
            try:
                head = bytearray()
                async for chunk in response.aiter_raw():
                    head += chunk
                    if len(head) >= RESPONSE_READ_LIMIT:
                        break  # the rest is never read: closing drops the connection
                return response.status_code, response.headers.get("location"), bytes(head[:RESPONSE_READ_LIMIT])
            finally:
                await response.aclose()


def delivery_attempt(*, delivery_id: int) -> WebhookAttempt | None:
    """Make the next attempt of a pending delivery, record it, and schedule a retry or declare
    it dead. Idempotent per attempt number (a redelivered task finds the attempt recorded)."""
    from modelport.gateway.services import prediction_data

    delivery = WebhookDelivery.objects.select_related("prediction__version__model__owner",
                                                      "prediction__user").filter(pk=delivery_id).first()
    if delivery is None or delivery.status != WebhookDelivery.Status.PENDING:
        return None
    number = delivery.attempts + 1
    prediction = delivery.prediction
    body = json.dumps(prediction_data(prediction)).encode()
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": "modelport-webhooks/1",
        "webhook-id": delivery.webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret=secret_for(user=prediction.user), webhook_id=delivery.webhook_id,
                                  timestamp=timestamp, body=body),
    }
    ok, status_code, excerpt, error = False, None, "", ""
    timeout = float(settings.MODELPORT_WEBHOOK_TIMEOUT_S)
    start = time.perf_counter()
    try:
        status_code, location, head = asyncio.run(_post(delivery.url, body, headers, timeout))
        excerpt = head.decode("utf-8", "replace")[:EXCERPT]
        ok = 200 <= status_code < 300
        if 300 <= status_code < 400:
            error = f"redirect to {location or '?'} not followed"
        elif not ok:
            error = f"HTTP {status_code}"
    except WebhookTargetError as exc:
        error = str(exc)
    except (TimeoutError, httpx.TimeoutException):
        error = f"timed out after {timeout} s"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
    latency = (time.perf_counter() - start) * 1000.0
    with transaction.atomic():
        updated = WebhookDelivery.objects.filter(pk=delivery.pk, attempts=delivery.attempts,
                                                 status=WebhookDelivery.Status.PENDING)
        if ok:
            status = WebhookDelivery.Status.DELIVERED
        elif number >= settings.MODELPORT_WEBHOOK_MAX_ATTEMPTS:
            status = WebhookDelivery.Status.DEAD
        else:
            status = WebhookDelivery.Status.PENDING
        retry_in = backoff_s(number) if status == WebhookDelivery.Status.PENDING else None
        if not updated.update(attempts=number, status=status,
                              next_attempt_at=timezone.now() + timedelta(seconds=retry_in) if retry_in else None):
            return None  # another copy of this task recorded this attempt
        attempt = WebhookAttempt.objects.create(delivery=delivery, number=number, status_code=status_code,
                                                latency_ms=round(latency, 2), response_excerpt=excerpt,
                                                error=error, ok=ok)
        if retry_in is not None:
            transaction.on_commit(lambda: _send_later(delivery.pk, retry_in))
    return attempt


def delivery_data(delivery: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": delivery.webhook_id,
        "event": delivery.event,
        "status": delivery.status,
        "attempts": [
            {"number": a.number, "at": a.at.isoformat(), "status_code": a.status_code, "latency_ms": a.latency_ms,
             "ok": a.ok, "error": a.error, "response_excerpt": a.response_excerpt}
            for a in delivery.attempt_log.all()
        ],
    }
