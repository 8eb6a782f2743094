from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from workers.demo import mlp_onnx


def make_staff(username: str = "root", *, staff: bool = True) -> Any:
    from modelport.accounts.services import user_create

    return user_create(username=username, password="pw-not-used-0123", is_staff=staff)


@pytest.fixture
def staff(db: Any) -> Any:
    return make_staff("root")


@pytest.fixture
def plain_user(db: Any) -> Any:
    return make_staff("mallory", staff=False)


class AdminSession:
    """A browser-like session against the live web process: a session cookie made in this
    process (force_login writes the session row to the shared test database) plus CSRF."""

    def __init__(self, base_url: str, user: Any) -> None:
        from django.test import Client

        client = Client()
        client.force_login(user)
        self.http = httpx.Client(base_url=base_url, timeout=30, follow_redirects=False)
        self.http.cookies.set("sessionid", client.cookies["sessionid"].value)

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(url, **kwargs)

    def post(self, url: str, data: dict[str, Any]) -> httpx.Response:
        if "csrftoken" not in self.http.cookies:
            self.http.get("/admin/")
        token = self.http.cookies.get("csrftoken") or ""
        return self.http.post(url, data={**data, "csrfmiddlewaretoken": token})

    def action(self, changelist: str, action: str, ids: list[int], **extra: Any) -> httpx.Response:
        self.get(changelist)  # sets the CSRF cookie, like a browser opening the page
        return self.post(changelist, {"action": action, "_selected_action": [str(i) for i in ids],
                                      "index": "0", **extra})


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    return mlp_onnx(tmp_path / "mlp.onnx", sizes=(16, 8, 4), seed=5)


def ready_model(api: Any, mlp_path: Path, name: str) -> dict:
    assert api.post("/api/v1/models", json={"name": name, "visibility": "private"}).status_code == 201
    resp = api.upload(api.username, name, fmt="onnx", artifact=mlp_path)
    assert resp.status_code == 202, resp.text
    version = api.wait_version(api.username, name, resp.json()["version"])
    assert version["status"] == "ready", version
    return version


def call(api: Any, owner: str, name: str, **kwargs: Any) -> httpx.Response:
    return api.post(f"/api/v1/models/{owner}/{name}/predictions", json={"input": {"x": [[0.5] * 16]}},
                    headers={"Prefer": "wait", **kwargs.pop("headers", {})}, **kwargs)


def rows(html: str, css_class: str) -> dict[str, str]:
    """The fleet table's rows by worker id: {worker id: row HTML}."""
    found = {}
    for match in re.finditer(r'<tr class="worker ([a-z]+)" data-worker="([^"]+)"[^>]*>(.*?)</tr>', html, re.S):
        if match.group(1) == css_class:
            found[match.group(2)] = match.group(3)
    return found
