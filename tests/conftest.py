from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests import stack as stk


@pytest.fixture(scope="session")
def platform_stack(django_db_setup: Any, django_db_blocker: Any) -> Iterator[stk.Stack]:
    """Real uvicorn web process + a conversion worker + a serving worker, on the test database."""
    from django.conf import settings
    from django.db import connection

    db_name = connection.settings_dict["NAME"]
    base = os.environ["DATABASE_URL"].rsplit("/", 1)[0]
    env = stk.process_env(DATABASE_URL=f"{base}/{db_name}")
    prefix = settings.MODELPORT_REDIS_PREFIX
    client = redis.Redis.from_url(settings.REDIS_URL)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    port = stk.free_port()
    stack = stk.Stack(base_url=f"http://127.0.0.1:{port}", env=env, prefix=prefix, redis=client)
    web = stk.start("web", [sys.executable, "-m", "uvicorn", "modelport.config.asgi:application",
                            "--host", "127.0.0.1", "--port", str(port), "--no-access-log"], env)
    stack.procs["web"] = web
    try:
        stack.start_worker("convert", serve=False, queues=[settings.CELERY_QUEUE_CONVERT])
        stack.start_worker("webhooks", serve=False, queues=[settings.CELERY_QUEUE_WEBHOOKS])
        serve = stack.start_worker("serve", serve=True, queues=[settings.CELERY_QUEUE_CONTROL])
        stk.wait_http(f"{stack.base_url}/healthz", web)
        stack.wait_for_serving(serve)
        yield stack
    finally:
        stack.stop()
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)


@pytest.fixture
def live(platform_stack: stk.Stack, transactional_db: Any) -> stk.Stack:
    return platform_stack


def staff_key() -> str:
    """A new staff user's API key (creating a user changes the resolution generation, so make
    it before the calls whose admission path a test observes)."""
    from modelport.accounts.services import api_key_issue, user_create

    return api_key_issue(user=user_create(username=f"staff{time.monotonic_ns()}", is_staff=True)).secret


def wait_recorded(ids: Iterable[str], timeout: float = 10.0) -> None:
    """Wait until the predictions `ids` have their rows: a postpaid call is answered before its
    worker writes its row (serving.ServingLoop._record), so a test that reads the database
    (balance, usage, rows) straight after the answers waits for them first."""
    from modelport.gateway.models import Prediction

    wanted = set(ids)
    deadline = time.monotonic() + timeout
    while Prediction.objects.filter(pk__in=wanted).count() < len(wanted):
        assert time.monotonic() < deadline, "calls were answered but not recorded"
        time.sleep(0.02)


def call_admissions(base_url: str, key: str) -> dict[str, float]:
    """A web process's modelport_call_admissions_total by path ('cache', 'thread'), read with
    staff key `key`."""
    import re

    text = httpx.get(f"{base_url}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=30).text
    found = re.findall(r'^modelport_call_admissions_total\{path="(\w+)"\} ([\d.e+]+)$', text, re.M)
    return {path: float(value) for path, value in found}


def make_user(username: str, *, credits: int | None = None) -> tuple[Any, str]:
    from modelport.accounts.services import api_key_issue, user_create

    user = user_create(username=username, credits=credits)
    return user, api_key_issue(user=user).secret


class Api:
    """An httpx client for one API key against the live stack."""

    def __init__(self, base_url: str, key: str | None) -> None:
        self.username = ""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=60)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.http, name)

    def upload(self, owner: str, name: str, *, fmt: str, artifact: Path, **fields: Any) -> httpx.Response:
        files = {"artifact": (artifact.name, artifact.read_bytes())}
        if "source" in fields:
            src = Path(fields.pop("source"))
            files["source"] = (src.name, src.read_bytes())
        data = {"format": fmt, **{k: v if isinstance(v, str) else __import__("json").dumps(v)
                                  for k, v in fields.items()}}
        return self.http.post(f"/api/v1/models/{owner}/{name}/versions", data=data, files=files)

    def wait_version(self, owner: str, name: str, number: int, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.http.get(f"/api/v1/models/{owner}/{name}/versions/{number}").json()
            if body["status"] in ("ready", "failed"):
                return body
            time.sleep(0.25)
        raise TimeoutError(f"version {number} of {owner}/{name} still {body['status']}")

    def balance_micro(self) -> int:
        return self.http.get("/api/v1/account").json()["credits_micro"]


@pytest.fixture
def user_api(live: stk.Stack) -> Any:
    def factory(username: str, *, credits: int | None = None) -> Api:
        _, key = make_user(username, credits=credits)
        api = Api(live.base_url, key)
        api.username = username
        return api

    return factory


@pytest.fixture
def fleet(live: stk.Stack) -> Iterator[stk.Stack]:
    """A second, private data plane on the same database: its own Redis prefix, its own web
    process, and no serving worker until the test starts the ones it wants (so tests can stop,
    pause and kill workers without touching the shared stack)."""
    import uuid

    prefix = f"{live.prefix}f{uuid.uuid4().hex[:6]}"
    env = {**live.env, "MODELPORT_REDIS_PREFIX": prefix}
    port = stk.free_port()
    stack = stk.Stack(base_url=f"http://127.0.0.1:{port}", env=env, prefix=prefix, redis=live.redis)
    web = stk.start(f"web-{prefix}", [sys.executable, "-m", "uvicorn", "modelport.config.asgi:application",
                                      "--host", "127.0.0.1", "--port", str(port), "--no-access-log"], env)
    stack.procs["web"] = web
    try:
        stk.wait_http(f"{stack.base_url}/healthz", web)
        yield stack
    finally:
        stack.stop()
        for key in live.redis.scan_iter(f"{prefix}:*"):
            live.redis.delete(key)
