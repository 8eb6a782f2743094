"""Issue 16.4: request bodies are refused unread from anonymous callers and capped while they
stream, chunked or not (common/bodyguard.py, gateway/fastlane.py), on a real uvicorn process.

The client here is a raw socket that sends a chunked body lazily, 64 KiB at a time, and looks
for the server's answer between chunks: "answered before the client finished sending" is then
a plain fact (the old server read every byte before it answered)."""

from __future__ import annotations

import select
import socket
import sys

import pytest

from tests import stack as stk
from tests.conftest import make_user

pytestmark = pytest.mark.integration
MB = 1024 * 1024
BLOCK = b"[" + b"0," * (32 * 1024 - 1) + b"0]"  # 64 KiB of (a piece of) JSON
CHUNK = f"{len(BLOCK):x}\r\n".encode() + BLOCK + b"\r\n"


@pytest.fixture
def small_web(live):
    """A web process on the test stack with caps small enough to pass: 1 MB bodies, 2 MB uploads."""
    port = stk.free_port()
    env = {**live.env, "MODELPORT_MAX_REQUEST_MB": "1", "MODELPORT_MAX_UPLOAD_MB": "2"}
    web = stk.start("web-bodies", [sys.executable, "-m", "uvicorn", "modelport.config.asgi:application",
                                   "--host", "127.0.0.1", "--port", str(port), "--no-access-log"], env)
    try:
        stk.wait_http(f"http://127.0.0.1:{port}/healthz", web)
        yield port
    finally:
        web.stop()


def stream(port: int, path: str, *, total: int, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """POST a chunked body of up to `total` bytes to `path`, stopping as soon as the server
    answers. Returns (body bytes sent, the raw response; b"" when none came)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Transfer-Encoding: chunked",
                 "Content-Type: application/json", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        sent = 0
        while sent < total:
            if select.select([sock], [], [], 0)[0]:
                break  # the server answered
            try:
                sock.sendall(CHUNK)
            except OSError:  # the server closed its side (or stopped reading for 10 s)
                break
            sent += len(BLOCK)
        else:
            sock.sendall(b"0\r\n\r\n")
        response = b""
        sock.settimeout(20)
        try:
            while True:  # the refusals close the connection
                part = sock.recv(65536)
                if not part:
                    break
                response += part
        except OSError:
            pass
        return sent, response
    finally:
        sock.close()


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response.split(b" ", 2)[1])


@pytest.mark.parametrize("path", ["/api/v1/models", "/api/v1/models/someone/thing/versions",
                                  "/api/v1/keys", "/v2/models/someone/thing/infer"])
def test_anonymous_chunked_body_is_refused_before_it_is_read(small_web, path):
    sent, response = stream(small_web, path, total=200 * MB)
    assert status_of(response) == 401, response[:500]
    # Answered after the headers, not after 200 MB: at most what socket buffers took meanwhile.
    assert sent < 16 * MB, sent
    assert b"connection: close" in response.lower()


def test_a_bad_key_or_session_is_refused_before_the_body(small_web):
    sent, response = stream(small_web, "/api/v1/models", total=200 * MB,
                            headers={"Authorization": "Bearer mp_notakey"})
    assert status_of(response) == 401 and b"invalid or revoked API key" in response
    assert sent < 16 * MB
    sent, response = stream(small_web, "/api/v1/models/x/y/versions", total=200 * MB,
                            headers={"Cookie": "sessionid=forged"})
    assert status_of(response) == 401 and sent < 16 * MB
    sent, response = stream(small_web, "/models/x/y/upload/", total=200 * MB)  # the dashboard's form
    assert status_of(response) == 302 and b"location: /login/?next=/models/x/y/upload/" in response.lower()
    assert sent < 16 * MB


@pytest.mark.parametrize(("path", "cap"), [("/api/v1/models", 1 * MB), ("/api/v1/account/webhook_secret", 1 * MB),
                                           ("/api/v1/models/bodies/m/versions", 3 * MB)])
def test_authenticated_chunked_body_over_the_cap_is_413_while_it_streams(small_web, path, cap):
    from modelport.registry.models import Model

    user, key = make_user("bodies")
    sent, response = stream(small_web, path, total=200 * MB, headers={"Authorization": f"Bearer {key}"})
    assert status_of(response) == 413, response[:500]
    assert f"request body exceeds {cap} bytes".encode() in response
    assert cap < sent < cap + 16 * MB, sent
    assert not Model.objects.filter(owner=user).exists()


def test_bodies_within_the_cap_still_work(small_web):
    import httpx
    from modelport.registry.models import Model

    user, key = make_user("bodies")
    headers = {"Authorization": f"Bearer {key}"}
    base = f"http://127.0.0.1:{small_web}"
    assert httpx.post(f"{base}/api/v1/models", json={"name": "plain"}, headers=headers).status_code == 201
    # A declared length over the cap is refused from the headers alone.
    declared = httpx.post(f"{base}/api/v1/models", content=b"x" * (MB + 1), headers=headers)
    assert declared.status_code == 413
    assert sorted(Model.objects.filter(owner=user).values_list("name", flat=True)) == ["plain"]
