"""Operations against the live stack: real uvicorn web processes, Celery serving workers, Redis."""

from __future__ import annotations

import sys
import time
import uuid
from typing import Any

import httpx
import pytest
import redis
from django.conf import settings
from modelport.accounts.services import api_key_issue
from modelport.gateway.models import Prediction
from modelport.ops.models import AuditEntry
from modelport.registry.models import ModelVersion

from tests import stack as stk
from tests.conftest import wait_recorded
from tests.ops.conftest import AdminSession, call, make_staff, ready_model, rows

pytestmark = pytest.mark.integration

VERSIONS = "/admin/registry/modelversion/"


@pytest.fixture
def alice(user_api: Any) -> Any:
    return user_api("alice")


@pytest.fixture
def admin_session(live: stk.Stack) -> AdminSession:
    return AdminSession(live.base_url, make_staff("root"))


def _version_id(owner: str, name: str, number: int = 1) -> int:
    return ModelVersion.objects.get(model__owner__username=owner, model__name=name, number=number).pk


def _wait(predicate: Any, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_disabling_a_version_makes_calls_503_and_enabling_restores(live, alice, admin_session, mlp_path):
    ready_model(alice, mlp_path, "mlp")
    assert call(alice, "alice", "mlp").status_code == 200
    vid = _version_id("alice", "mlp")
    balance = alice.balance_micro()

    resp = admin_session.action(VERSIONS, "disable", [vid])
    assert resp.status_code == 302, resp.text[-2000:]
    assert ModelVersion.objects.get(pk=vid).disabled is True
    assert live.redis.sismember(f"{live.prefix}:disabled", vid)
    refused = call(alice, "alice", "mlp")
    assert refused.status_code == 503
    assert refused.headers["content-type"] == "application/problem+json"
    assert "disabled" in refused.json()["detail"]
    assert call(alice, "alice", "mlp", headers={}).status_code == 503
    assert alice.balance_micro() == balance  # refused calls cost nothing
    assert AuditEntry.objects.filter(action="version.disable", object_id=str(vid), actor_username="root").exists()

    assert admin_session.action(VERSIONS, "enable", [vid]).status_code == 302
    assert not live.redis.sismember(f"{live.prefix}:disabled", vid)
    assert call(alice, "alice", "mlp").status_code == 200


def test_disabled_version_is_unloaded_from_workers(live, alice, admin_session, mlp_path):
    ready_model(alice, mlp_path, "evictme")
    assert call(alice, "alice", "evictme").status_code == 200
    vid = _version_id("alice", "evictme")
    assert _wait(lambda: any(vid in w["loaded"] for w in live.serving_workers()))
    assert admin_session.action(VERSIONS, "disable", [vid]).status_code == 302
    assert _wait(lambda: not any(vid in w["loaded"] for w in live.serving_workers()), timeout=10)


def test_fleet_page_lists_two_live_serving_workers_with_their_loaded_models(live, alice, admin_session, mlp_path):
    second = live.start_worker("serve2", serve=True, queues=[settings.CELERY_QUEUE_CONTROL])
    try:
        live.wait_for_serving(second)
        for name in ("fleet-a", "fleet-b", "fleet-c"):
            ready_model(alice, mlp_path, name)
            assert call(alice, "alice", name).status_code == 200
        ours = {_version_id("alice", n): f"alice/{n} v1" for n in ("fleet-a", "fleet-b", "fleet-c")}
        # Every model we called is loaded somewhere (a worker's heartbeat lists it).
        assert _wait(lambda: set(ours) <= {v for w in live.serving_workers() for v in w["loaded"]})

        resp = admin_session.get("/admin/fleet/")
        assert resp.status_code == 200
        live_rows = rows(resp.text, "live")
        beats = {b["pid"]: b for b in live.serving_workers()}
        pids = {live.procs["serve"].popen.pid, second.popen.pid}
        assert pids <= set(beats)
        for pid in pids:
            beat = beats[pid]
            row = live_rows[beat["id"]]
            assert f"{beat['host']} / {pid}" in row
            assert "cpu" in row and "GiB" in row  # device and host memory used / total
            for vid in set(beat["loaded"]) & set(ours):
                assert ours[vid] in row and f'data-version="{vid}"' in row
            for vid in set(ours) - set(beat["loaded"]):
                assert ours[vid] not in row
        assert "STALE" not in "".join(live_rows.values())
    finally:
        second.stop()
        live.procs.pop("serve2", None)

    # The stopped worker removed its heartbeat; a dead one's would be marked stale.
    live.redis.hset(f"{live.prefix}:workers", "ghost@nowhere:1",
                    '{"id": "ghost@nowhere:1", "host": "nowhere", "pid": 1, "loaded": [], "ts": 1000.0}')
    page = admin_session.get("/admin/fleet/").text
    assert "ghost@nowhere:1" in rows(page, "stale")
    assert "STALE" in rows(page, "stale")["ghost@nowhere:1"]
    assert second.popen.pid not in {b["pid"] for b in live.serving_workers()}
    resp = admin_session.post("/admin/fleet/", {"forget_stale": "1"})
    assert resp.status_code == 302
    assert not live.redis.hexists(f"{live.prefix}:workers", "ghost@nowhere:1")
    assert AuditEntry.objects.get(action="fleet.forget_stale").details == {"workers": ["ghost@nowhere:1"]}


def test_fleet_page_refuses_non_staff(live):
    session = AdminSession(live.base_url, make_staff("mallory", staff=False))
    resp = session.get("/admin/fleet/")
    assert resp.status_code == 302 and resp.headers["location"].startswith("/admin/login/")
    assert session.post("/admin/fleet/", {"forget_stale": "1"}).status_code in (302, 403)  # login or CSRF
    assert not AuditEntry.objects.exists()


def test_metrics_refuse_anonymous_and_non_staff_and_serve_staff(live, admin_session, alice):
    assert alice.get("/api/v1/account").status_code == 200  # something to count
    anonymous = httpx.get(f"{live.base_url}/metrics")
    assert anonymous.status_code == 401
    assert "modelport_http" not in anonymous.text
    assert httpx.get(f"{live.base_url}/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    # A valid but non-staff API key and a non-staff session are refused too.
    assert alice.get("/metrics").status_code == 401
    non_staff = AdminSession(live.base_url, make_staff("mallory", staff=False))
    assert non_staff.get("/metrics").status_code == 403

    resp = admin_session.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    assert 'modelport_http_requests_total{method="GET",route="api/v1/account",status="200"}' in resp.text
    assert 'modelport_http_request_duration_seconds_bucket{le="0.005",method="GET",route="api/v1/account"}' \
        in resp.text

    staff_key = api_key_issue(user=make_staff("ops")).secret
    assert httpx.get(f"{live.base_url}/metrics", headers={"Authorization": f"Bearer {staff_key}"}).status_code == 200


def test_request_id_reaches_the_web_log_line_and_the_prediction(live, alice, mlp_path):
    ready_model(alice, mlp_path, "traced")
    request_id = f"ops-{uuid.uuid4().hex[:12]}"
    resp = call(alice, "alice", "traced", headers={"X-Request-Id": request_id})
    assert resp.status_code == 200
    assert resp.headers["x-request-id"] == request_id
    wait_recorded([resp.json()["id"]])  # a postpaid call is answered before its row is written
    assert Prediction.objects.get(pk=resp.json()["id"]).request_id == request_id
    access = f"[{request_id}] POST /api/v1/models/alice/traced/predictions 200"
    # The access line is written once the response is sent.
    assert _wait(lambda: access in live.procs["web"].log(), timeout=5), live.procs["web"].log()[-3000:]

    # Without one (or with an unusable one) the web tier makes one up and says which.
    made = call(alice, "alice", "traced", headers={"X-Request-Id": "bad id with spaces"})
    assert made.status_code == 200
    assert len(made.headers["x-request-id"]) == 32 and made.headers["x-request-id"] != "bad id with spaces"


def test_request_id_reaches_the_worker_log_line(live, alice, mlp_path):
    ready_model(alice, mlp_path, "traced-worker")
    request_id = f"ops-{uuid.uuid4().hex[:12]}"
    assert call(alice, "alice", "traced-worker", headers={"X-Request-Id": request_id}).status_code == 200
    assert _wait(lambda: request_id in live.procs["serve"].log(), timeout=5)


def test_workers_log_at_modelport_log_level_whatever_celerys_loglevel(fleet):
    """MODELPORT_LOG_LEVEL sets the workers' level as it does the web's: Celery's --loglevel
    (INFO below; WARNING when none is given, as in the compose file) does not override it."""
    queues = [f"{fleet.prefix}.control"]
    quiet = fleet.start_worker("quiet", serve=True, MODELPORT_LOG_LEVEL="WARNING")  # with --loglevel INFO
    argv = stk.celery_argv("loud", queues, serve=True)
    at = argv.index("--loglevel")
    loud = stk.start(f"loud-{fleet.prefix}", argv[:at] + argv[at + 2:], {**fleet.env, "MODELPORT_LOG_LEVEL": "INFO"})
    fleet.procs["loud"] = loud
    fleet.wait_for_serving(quiet)
    fleet.wait_for_serving(loud)
    assert _wait(lambda: "serving loop started" in loud.log(), timeout=10), loud.log()[-3000:]
    assert "[queues]" in quiet.log()  # its output is captured (Celery's banner)
    assert "serving loop started" not in quiet.log()


def _uvicorn(name: str, env: dict[str, str]) -> tuple[stk.Proc, str]:
    port = stk.free_port()
    proc = stk.start(name, [sys.executable, "-m", "uvicorn", "modelport.config.asgi:application", "--host",
                            "127.0.0.1", "--port", str(port), "--no-access-log"], env)
    base = f"http://127.0.0.1:{port}"
    stk.wait_http(f"{base}/healthz", proc)
    return proc, base


def _redis_server(port: int, env: dict[str, str]) -> stk.Proc:
    proc = stk.start(f"redis-{port}", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no"], env)
    client = redis.Redis(port=port, socket_connect_timeout=1)
    assert _wait(lambda: _pings(client), timeout=10), proc.log()
    return proc


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _ready(base: str) -> int:
    return httpx.get(f"{base}/readyz", timeout=10).status_code


def test_readyz_follows_the_broker(live):
    """A private Redis and web process: stopping that Redis (never the shared one) fails /readyz."""
    port = stk.free_port()
    broker = _redis_server(port, live.env)
    web = None
    try:
        web, base = _uvicorn("web-readyz", {**live.env, "REDIS_URL": f"redis://127.0.0.1:{port}/0"})
        resp = httpx.get(f"{base}/readyz")
        assert (resp.status_code, resp.json()) == (200, {"ready": True})

        broker.stop()
        resp = httpx.get(f"{base}/readyz", timeout=10)
        assert (resp.status_code, resp.json()) == (503, {"ready": False})
        assert httpx.get(f"{base}/healthz").status_code == 200  # the process itself is up

        broker = _redis_server(port, live.env)
        assert _wait(lambda: _ready(base) == 200, timeout=10)
    finally:
        broker.stop()
        if web is not None:
            web.stop()


def test_readyz_fails_without_the_database(live):
    dead = f"postgres://postgres@127.0.0.1:{stk.free_port()}/nothing"
    web, base = _uvicorn("web-nodb", {**live.env, "DATABASE_URL": dead})
    try:
        assert _ready(base) == 503
        assert httpx.get(f"{base}/healthz").status_code == 200
    finally:
        web.stop()
