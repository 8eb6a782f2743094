"""Issues 16.6 and 16.7: what an upload is refused for, and the order conversions run in.

- 16.6: an upload while Redis is down answers 503 and leaves no version behind (it used to
  answer 500 with a version saved and `queued` forever). A private redis-server, stopped here.
- 16.7: per-account limits on versions in progress and on uploads per window (429 with
  Retry-After, problem+json, nothing saved), and round-robin conversions across accounts.
"""

from __future__ import annotations

import sys
import time

import pytest

from tests import stack as stk
from tests.conftest import Api, make_user
from tests.integration.test_redis_restart import _redis
from workers.demo import mlp_onnx

pytestmark = pytest.mark.integration


def _web(name: str, env: dict[str, str]) -> tuple[stk.Proc, str]:
    port = stk.free_port()
    web = stk.start(name, [sys.executable, "-m", "uvicorn", "modelport.config.asgi:application",
                           "--host", "127.0.0.1", "--port", str(port), "--no-access-log"], env)
    stk.wait_http(f"http://127.0.0.1:{port}/healthz", web)
    return web, f"http://127.0.0.1:{port}"


def _api(base_url: str, username: str) -> Api:
    _, key = make_user(username)
    api = Api(base_url, key)
    api.username = username
    assert api.post("/api/v1/models", json={"name": "m"}).status_code == 201
    return api


def _versions(username: str) -> list[tuple[int, str]]:
    from modelport.registry.models import ModelVersion

    return list(ModelVersion.objects.filter(model__owner__username=username).order_by("number")
                .values_list("number", "status"))


def test_upload_while_redis_is_down_is_503_and_saves_nothing(live, tmp_path):
    port = stk.free_port()
    redis_proc = _redis(port, tmp_path)
    env = {**live.env, "REDIS_URL": f"redis://127.0.0.1:{port}/0", "MODELPORT_REDIS_PREFIX": "mpupdown"}
    web, base = _web("web-updown", env)
    onnx = mlp_onnx(tmp_path / "m.onnx", sizes=(16, 8, 4))
    try:
        api = _api(base, "outage")
        redis_proc.kill()
        redis_proc.wait()
        started = time.monotonic()
        resp = api.upload("outage", "m", fmt="onnx", artifact=onnx)
        took = time.monotonic() - started
        assert resp.status_code == 503, resp.text
        assert resp.headers["content-type"] == "application/problem+json"
        assert "conversion queue is unavailable" in resp.json()["detail"]
        assert int(resp.headers["Retry-After"]) >= 1
        assert took < 15, took
        assert _versions("outage") == []  # nothing left behind to stay queued forever
        # Redis back: the same upload is accepted and queued (number 1: the refused one left no gap).
        redis_proc = _redis(port, tmp_path)
        resp = api.upload("outage", "m", fmt="onnx", artifact=onnx)
        assert resp.status_code == 202, resp.text
        assert _versions("outage") == [(1, "queued")]
    finally:
        web.stop()
        redis_proc.kill()
        redis_proc.wait()


def test_in_progress_and_rate_limits_per_account(live, tmp_path):
    env = {**live.env, "MODELPORT_UPLOAD_MAX_IN_PROGRESS": "2", "MODELPORT_UPLOAD_RATE_LIMIT": "3/minute"}
    web, base = _web("web-throttle", env)
    onnx = mlp_onnx(tmp_path / "m.onnx", sizes=(16, 8, 4))
    convert = live.procs["convert"]
    try:
        api, other = _api(base, "busy"), _api(base, "bystander")
        convert.pause()  # versions stay queued while the limits are probed
        try:
            assert [api.upload("busy", "m", fmt="onnx", artifact=onnx).status_code for _ in range(2)] == [202, 202]
            refused = api.upload("busy", "m", fmt="onnx", artifact=onnx)
            assert refused.status_code == 429
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.headers["Retry-After"] == "30"
            assert "at most 2 at a time" in refused.json()["detail"]
            assert _versions("busy") == [(1, "queued"), (2, "queued")]
            # Another account is not held back by this one's limit.
            assert other.upload("bystander", "m", fmt="onnx", artifact=onnx).status_code == 202
        finally:
            convert.resume()
        assert api.wait_version("busy", "m", 2)["status"] == "ready"
        # In-progress room again; the third upload of the minute is the last one the rate allows.
        assert api.upload("busy", "m", fmt="onnx", artifact=onnx).status_code == 202
        assert api.wait_version("busy", "m", 3)["status"] == "ready"
        refused = api.upload("busy", "m", fmt="onnx", artifact=onnx)
        assert refused.status_code == 429, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert "upload rate limit 3 per 1 minute exceeded" in refused.json()["detail"]
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert [n for n, _ in _versions("busy")] == [1, 2, 3]
    finally:
        web.stop()


def test_conversions_go_round_robin_across_accounts(user_api, live, tmp_path):
    """A backlog of one account's uploads does not delay another account's first upload behind
    all of it: with the convert worker paused, A uploads three versions, then B and C one each;
    they are claimed a1, b1, c1, a2, a3 (FIFO would be a1, a2, a3, b1, c1)."""
    from modelport.registry.models import ModelVersion

    onnx = mlp_onnx(tmp_path / "m.onnx", sizes=(16, 8, 4))
    apis = {name: user_api(name) for name in ("fair-a", "fair-b", "fair-c")}
    for api in apis.values():
        assert api.post("/api/v1/models", json={"name": "m"}).status_code == 201
    convert = live.procs["convert"]
    convert.pause()
    try:
        for name in ("fair-a", "fair-a", "fair-a", "fair-b", "fair-c"):
            assert apis[name].upload(name, "m", fmt="onnx", artifact=onnx).status_code == 202
    finally:
        convert.resume()
    for name, count in (("fair-a", 3), ("fair-b", 1), ("fair-c", 1)):
        for number in range(1, count + 1):
            assert apis[name].wait_version(name, "m", number)["status"] == "ready"
    order = [(v.model.owner.username, v.number) for v in
             ModelVersion.objects.filter(model__owner__username__startswith="fair-").select_related("model__owner")
             .order_by("claimed_at")]
    assert order == [("fair-a", 1), ("fair-b", 1), ("fair-c", 1), ("fair-a", 2), ("fair-a", 3)]


def test_queued_versions_each_run_once_whatever_message_takes_them(user_api, live, tmp_path):
    """Messages do not fix their version, so check the bookkeeping: every queued version ends
    ready exactly once, and a message left over (a revalidated or refused version's) finds
    nothing to do."""
    from modelport.registry.services import version_claim_fair

    onnx = mlp_onnx(tmp_path / "m.onnx", sizes=(16, 8, 4))
    api = user_api("fair-d")
    assert api.post("/api/v1/models", json={"name": "m"}).status_code == 201
    for _ in range(3):
        assert api.upload("fair-d", "m", fmt="onnx", artifact=onnx).status_code == 202
    for number in (1, 2, 3):
        assert api.wait_version("fair-d", "m", number)["status"] == "ready"
    assert _versions("fair-d") == [(1, "ready"), (2, "ready"), (3, "ready")]
    from modelport.registry.models import ModelVersion

    first = ModelVersion.objects.get(model__owner__username="fair-d", number=1)
    assert version_claim_fair(version_id=first.pk, stale_after_s=3600) is None


def test_the_reaper_resends_lost_conversion_messages(user_api, live, tmp_path):
    """A queued version whose message is gone (Redis restarted without persistence, as `make
    run`'s private Redis does) is taken up again by the periodic reaper, and only once."""
    from django.conf import settings
    from modelport.registry.tasks import versions_reap

    onnx = mlp_onnx(tmp_path / "m.onnx", sizes=(16, 8, 4))
    api = user_api("lost-msg")
    assert api.post("/api/v1/models", json={"name": "m"}).status_code == 201
    queue = settings.CELERY_QUEUE_CONVERT
    convert = live.procs["convert"]
    convert.pause()
    try:
        for _ in range(2):
            assert api.upload("lost-msg", "m", fmt="onnx", artifact=onnx).status_code == 202
        # The paused worker's pending BRPOP may already hold the first message: 1 or 2 wait.
        time.sleep(0.5)
        assert live.redis.llen(queue) in (1, 2)
        live.redis.delete(queue)  # the waiting messages are lost; the rows stay queued
        versions_reap()
        assert live.redis.llen(queue) == 2  # one message per queued version
        versions_reap()
        assert live.redis.llen(queue) == 2  # and no more on the next pass
    finally:
        convert.resume()
    for number in (1, 2):
        assert api.wait_version("lost-msg", "m", number)["status"] == "ready"
