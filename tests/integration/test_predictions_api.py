"""Issue 5: native predictions — async + GET, idempotency, cancel, rate limits, webhooks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import call_admissions, staff_key
from workers.demo import mlp_onnx

pytestmark = pytest.mark.integration
X = {"x": [[0.25] * 16]}


@pytest.fixture
def api(user_api, tmp_path):
    api = user_api("predictor")
    assert api.post("/api/v1/models", json={"name": "tiny"}).status_code == 201
    path = mlp_onnx(tmp_path / "tiny.onnx", sizes=(16, 8, 4))
    assert api.upload("predictor", "tiny", fmt="onnx", artifact=path).status_code == 202
    assert api.wait_version("predictor", "tiny", 1)["status"] == "ready"
    return api


def _wait_status(api, pid, statuses=("succeeded", "failed", "canceled"), timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = api.get(f"/api/v1/predictions/{pid}").json()
        if body["status"] in statuses:
            return body
        time.sleep(0.1)
    raise AssertionError(body)


def test_async_create_then_get_and_list(api):
    resp = api.post("/api/v1/models/predictor/tiny/predictions", json={"input": X})
    assert resp.status_code == 201
    created = resp.json()
    assert created["status"] == "starting" and created["output"] is None
    assert created["urls"]["get"].endswith(f"/api/v1/predictions/{created['id']}")
    done = _wait_status(api, created["id"])
    assert done["status"] == "succeeded" and len(done["output"]["y"][0]) == 4
    listed = api.get("/api/v1/predictions").json()
    assert [p["id"] for p in listed["results"]] == [created["id"]]
    pinned = api.post("/api/v1/models/predictor/tiny/versions/1/predictions", json={"input": X},
                      headers={"Prefer": "wait=10"})
    assert pinned.status_code == 200 and pinned.json()["version"] == 1
    assert api.post("/api/v1/models/predictor/tiny/versions/7/predictions", json={"input": X}).status_code == 404


def test_idempotency_key_charges_once(api):
    before = api.balance_micro()
    headers = {"Prefer": "wait", "Idempotency-Key": "order-17"}
    first = api.post("/api/v1/models/predictor/tiny/predictions", json={"input": X}, headers=headers)
    second = api.post("/api/v1/models/predictor/tiny/predictions", json={"input": X}, headers=headers)
    assert first.status_code == 200 and second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    assert api.balance_micro() == before - first.json()["credits"]["charged_micro"]
    assert len(api.get("/api/v1/predictions").json()["results"]) == 1


def test_cancel_before_start_releases_the_hold(api, fleet):
    """With no serving worker on this data plane the call stays queued; cancel releases it."""
    key = api.http.headers["Authorization"]
    import httpx

    before = api.balance_micro()
    resp = httpx.post(f"{fleet.base_url}/api/v1/models/predictor/tiny/predictions", json={"input": X},
                      headers={"Authorization": key}, timeout=30)
    assert resp.status_code == 201
    pid = resp.json()["id"]
    assert api.balance_micro() < before  # held
    canceled = api.post(f"/api/v1/predictions/{pid}/cancel").json()
    assert canceled["status"] == "canceled" and canceled["credits"]["charged"] == 0
    assert api.balance_micro() == before
    # Cancelling again changes nothing.
    assert api.post(f"/api/v1/predictions/{pid}/cancel").json()["status"] == "canceled"
    assert api.balance_micro() == before


def test_rate_limit_per_key_is_429(api, live):
    """Counted per key whichever admission path a call takes: the first call after the change
    reads the database (thread path), the next ones are resolved from the web's cache and
    counted by its Redis script, which refuses the fourth."""
    from modelport.accounts.models import ApiKey
    from modelport.gateway import authcache

    metrics_key = staff_key()
    ApiKey.objects.filter(user__username="predictor").update(rate_limit="3/minute")
    authcache.invalidate()  # a queryset update sends no signal: tell the web processes
    before = call_admissions(live.base_url, metrics_key)
    codes = [api.post("/api/v1/models/predictor/tiny/predictions", json={"input": X},
                      headers={"Prefer": "wait"}).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    after = call_admissions(live.base_url, metrics_key)
    assert after.get("cache", 0) - before.get("cache", 0) == 3
    last = api.post("/api/v1/models/predictor/tiny/predictions", json={"input": X})
    assert last.status_code == 429 and int(last.headers["Retry-After"]) >= 1
    assert last.headers["content-type"] == "application/problem+json"


class Receiver:
    """A webhook receiver on loopback answering a scripted list of statuses."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.requests: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"headers": dict(self.headers), "body": body})
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.requests) >= count, self.requests

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _verify(secret: str, request: dict) -> bool:
    h = request["headers"]
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{h['webhook-id']}.{h['webhook-timestamp']}.".encode() + request["body"]
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return hmac.compare_digest(expected, h["webhook-signature"])


def _deliveries(api, pid, count, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        results = api.get(f"/api/v1/predictions/{pid}/webhooks").json()["results"]
        if len(results) >= count and all(d["status"] != "pending" for d in results):
            return results
        time.sleep(0.1)
    raise AssertionError(results)


def test_webhooks_signed_retried_redirects_dead_letter_and_resend(api):
    secret = api.get("/api/v1/account/webhook_secret").json()["key"]
    assert secret.startswith("whsec_")
    receiver = Receiver([500, 200])  # the completed event fails once, then lands
    try:
        resp = api.post("/api/v1/models/predictor/tiny/predictions", headers={"Prefer": "wait"},
                        json={"input": X, "webhook": receiver.url, "webhook_events_filter": ["completed"]})
        assert resp.status_code == 200
        pid = resp.json()["id"]
        receiver.wait(2)
        assert all(_verify(secret, r) for r in receiver.requests)
        assert receiver.requests[0]["headers"]["webhook-id"] == receiver.requests[1]["headers"]["webhook-id"]
        payload = json.loads(receiver.requests[1]["body"])
        assert payload["id"] == pid and payload["status"] == "succeeded" and payload["output"]
        [delivery] = _deliveries(api, pid, 1)
        assert delivery["status"] == "delivered"
        assert [(a["status_code"], a["ok"]) for a in delivery["attempts"]] == [(500, False), (200, True)]
        assert delivery["attempts"][0]["error"] == "HTTP 500"

        # A redirect is a failed attempt; after the last attempt the delivery is dead.
        receiver.requests.clear()
        receiver.statuses = [302, 500, 503]
        resp = api.post("/api/v1/models/predictor/tiny/predictions", headers={"Prefer": "wait"},
                        json={"input": X, "webhook": receiver.url, "webhook_events_filter": ["completed"]})
        pid = resp.json()["id"]
        [delivery] = _deliveries(api, pid, 1)
        assert delivery["status"] == "dead"
        assert [a["status_code"] for a in delivery["attempts"]] == [302, 500, 503]
        assert "not followed" in delivery["attempts"][0]["error"]
        assert len(receiver.requests) == 3  # the redirect target was never contacted
        # The result is still there, and a resend delivers it.
        assert api.get(f"/api/v1/predictions/{pid}").json()["output"]
        assert api.post(f"/api/v1/predictions/{pid}/webhook/resend").status_code == 202
        deliveries = _deliveries(api, pid, 2)
        assert [d["status"] for d in deliveries] == ["dead", "delivered"]
        assert _verify(secret, receiver.requests[-1])

        # Both events when no filter is given: start, then completed.
        receiver.requests.clear()
        pid = api.post("/api/v1/models/predictor/tiny/predictions", headers={"Prefer": "wait"},
                       json={"input": X, "webhook": receiver.url}).json()["id"]
        assert sorted(d["event"] for d in _deliveries(api, pid, 2)) == ["completed", "start"]
    finally:
        receiver.close()


def test_webhook_target_rules(api, settings):
    from modelport.common.problems import Problem
    from modelport.gateway.webhooks import check_request

    settings.MODELPORT_WEBHOOK_ALLOW_PRIVATE = False
    for url in ("http://127.0.0.1/x", "http://10.1.2.3/x", "http://169.254.169.254/latest", "http://[::1]/x",
                "ftp://example.org/x", "http://user:pw@8.8.8.8/x", "http://192.168.0.5/"):
        with pytest.raises(Problem) as exc:
            check_request(webhook=url, events=None)
        assert exc.value.status == 400
    with pytest.raises(Problem):
        check_request(webhook="http://8.8.8.8/x", events=["finished"])
    assert check_request(webhook="http://8.8.8.8/x", events=None) == ("http://8.8.8.8/x", ["start", "completed"])


def test_oversize_body_is_413_and_nan_is_400(api, live, settings):
    import httpx

    key = api.http.headers["Authorization"]
    before = api.balance_micro()
    big = b'{"input": {"x": [' + b"0.0," * (5 * 1024 * 1024) + b'0.0]}}'  # > 16 MB
    resp = httpx.post(f"{live.base_url}/api/v1/models/predictor/tiny/predictions", content=big, timeout=60,
                      headers={"Authorization": key, "Content-Type": "application/json"})
    assert resp.status_code == 413
    resp = httpx.post(f"{live.base_url}/api/v1/models/predictor/tiny/predictions", timeout=30,
                      content=b'{"input": {"x": [[NaN, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]}}',
                      headers={"Authorization": key, "Content-Type": "application/json", "Prefer": "wait"})
    assert resp.status_code == 400 and "NaN" in resp.json()["detail"]
    resp = api.post("/api/v1/models/predictor/tiny/predictions", json={"input": {"x": [[1e39] * 16]}},
                    headers={"Prefer": "wait"})
    assert resp.status_code == 400 and "overflow" in resp.json()["detail"]
    assert api.balance_micro() == before
    assert api.get("/api/v1/predictions").json()["results"] == []


def test_resolution_cache_follows_revocation_disabling_and_visibility(user_api, live, tmp_path):
    """The web process caches call resolutions (gateway/authcache.py); every change through the
    platform applies to the very next call, and a change behind its back within the TTL."""
    from django.utils import timezone
    from modelport.accounts.models import ApiKey
    from modelport.accounts.services import api_key_issue, api_key_revoke
    from modelport.gateway import authcache
    from modelport.ops.services import version_set_disabled
    from modelport.registry.models import Model, ModelVersion

    from tests.conftest import Api, make_user

    owner = user_api("cacheowner")
    assert owner.post("/api/v1/models", json={"name": "m"}).status_code == 201
    resp = owner.upload("cacheowner", "m", fmt="onnx", artifact=mlp_onnx(tmp_path / "m.onnx", sizes=(16, 8, 4)))
    assert owner.wait_version("cacheowner", "m", resp.json()["version"])["status"] == "ready"
    url = "/api/v1/models/cacheowner/m/predictions"

    def status(api: Api) -> int:
        return api.post(url, json={"input": X}, headers={"Prefer": "wait"}).status_code

    staff, _ = make_user("cachestaff")
    staff.is_staff = True
    staff.save()
    for _ in range(3):
        assert status(owner) == 200  # resolved once, then from the cache
    version = ModelVersion.objects.get(model__name="m", model__owner__username="cacheowner")
    assert version_set_disabled(version=version, disabled=True, actor=staff)
    assert status(owner) == 503
    assert version_set_disabled(version=version, disabled=False, actor=staff)
    assert status(owner) == 200

    _, other_key = make_user("cacheother")
    other = Api(live.base_url, other_key)
    model = Model.objects.get(name="m", owner__username="cacheowner")
    model.visibility = Model.Visibility.PUBLIC
    model.save()
    assert status(other) == 200
    model.visibility = Model.Visibility.PRIVATE
    model.save()
    assert status(other) == 404

    second = Api(live.base_url, api_key_issue(user=model.owner, name="second").secret)
    assert status(second) == 200
    api_key_revoke(api_key=ApiKey.objects.get(user=model.owner, name="second"))
    assert status(second) == 401

    # Behind the platform's back (no signal, no invalidation): stale at most TTL_S.
    third = Api(live.base_url, api_key_issue(user=model.owner, name="third").secret)
    assert status(third) == 200
    ApiKey.objects.filter(user=model.owner, name="third").update(revoked_at=timezone.now())
    time.sleep(authcache.TTL_S + 0.5)
    assert status(third) == 401
