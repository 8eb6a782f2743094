"""Issue 16.5: a webhook receiver cannot hold or bloat the delivering worker. Deliveries run on
their own queue and worker (`<prefix>.webhooks`), read at most 64 KiB of a reply and end at
MODELPORT_WEBHOOK_TIMEOUT_S (2 s in the tests) however slowly the receiver answers."""

from __future__ import annotations

import socketserver
import threading
import time
from pathlib import Path

import pytest

from workers.demo import mlp_onnx

pytestmark = pytest.mark.integration
X = {"x": [[0.25] * 16]}
HUGE = 256 * 1024 * 1024


class RawReceiver:
    """A loopback HTTP receiver that answers every POST in one of two hostile ways:
    'huge' (200 with a HUGE-byte body sent as fast as the client takes it) or 'trickle'
    (a 200 whose status line and body arrive one byte every 0.5 s)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sent: list[int] = []  # body bytes the receiver managed to send, per request
        self.requests = 0
        receiver = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock = self.request
                sock.settimeout(30)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, rest = data.partition(b"\r\n\r\n")
                length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                while len(rest) < length:
                    rest += sock.recv(65536)
                receiver.requests += 1
                sent = 0
                try:
                    if receiver.mode == "huge":
                        sock.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {HUGE}\r\n\r\n".encode())
                        block = b"x" * 65536
                        while sent < HUGE:
                            sock.sendall(block)
                            sent += len(block)
                    else:
                        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n" + b"y" * 50:
                            sock.sendall(bytes([byte]))
                            sent += 1
                            time.sleep(0.5)
                except OSError:
                    pass  # the client hung up: what this test wants
                finally:
                    receiver.sent.append(sent)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _delivery(api, pid: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        results = api.get(f"/api/v1/predictions/{pid}/webhooks").json()["results"]
        if results and results[0]["status"] != "pending":
            return results[0]
        time.sleep(0.1)
    raise AssertionError(results)


@pytest.fixture
def api(user_api, tmp_path):
    api = user_api("hooked")
    assert api.post("/api/v1/models", json={"name": "tiny"}).status_code == 201
    assert api.upload("hooked", "tiny", fmt="onnx", artifact=mlp_onnx(tmp_path / "t.onnx", sizes=(16, 8, 4))
                      ).status_code == 202
    assert api.wait_version("hooked", "tiny", 1)["status"] == "ready"
    return api


def _call_with_webhook(api, url: str) -> str:
    resp = api.post("/api/v1/models/hooked/tiny/predictions", headers={"Prefer": "wait"},
                    json={"input": X, "webhook": url, "webhook_events_filter": ["completed"]})
    assert resp.status_code == 200, resp.text
    return resp.json()["id"]


def test_a_huge_reply_is_read_only_up_to_the_cap_on_the_webhooks_worker(api, live):
    worker = live.procs["webhooks"].popen.pid
    serving = live.procs["serve"].popen.pid
    before, serving_before = _peak_rss_mb(worker), _peak_rss_mb(serving)
    receiver = RawReceiver("huge")
    try:
        delivery = _delivery(api, _call_with_webhook(api, receiver.url))
        [attempt] = delivery["attempts"]
        assert delivery["status"] == "delivered" and attempt["status_code"] == 200
        assert attempt["response_excerpt"] == "x" * 500
        deadline = time.monotonic() + 10
        while not receiver.sent and time.monotonic() < deadline:
            time.sleep(0.05)
        # The worker hung up after 64 KiB: what the receiver got out is that plus socket buffers.
        assert receiver.sent and receiver.sent[0] < 16 * 1024 * 1024, receiver.sent
    finally:
        receiver.close()
    assert _peak_rss_mb(worker) - before < 32, (before, _peak_rss_mb(worker))
    assert _peak_rss_mb(serving) - serving_before < 32


def test_a_trickling_receiver_is_cut_off_at_the_attempt_deadline(api, live, settings):
    timeout = 2.0  # MODELPORT_WEBHOOK_TIMEOUT_S in settings_test; the workers inherit it
    receiver = RawReceiver("trickle")
    try:
        delivery = _delivery(api, _call_with_webhook(api, receiver.url), timeout=60)
        assert delivery["status"] == "dead"
        assert len(delivery["attempts"]) == settings.MODELPORT_WEBHOOK_MAX_ATTEMPTS
        for attempt in delivery["attempts"]:
            assert attempt["error"] == f"timed out after {timeout} s", attempt
            assert attempt["latency_ms"] < timeout * 1000 + 500, attempt
        # Each byte came within the old per-read timeout, so only an overall deadline stops it:
        # 2 s at 0.5 s a byte is at most ~5 bytes of the 88.
        assert receiver.sent and max(receiver.sent) <= 6, receiver.sent
    finally:
        receiver.close()


def test_webhook_deliveries_are_routed_to_their_own_queue():
    from modelport.config.celery import app
    from modelport.gateway.tasks import webhook_deliver

    route = app.amqp.router.route({}, webhook_deliver.name)
    assert route["queue"].name.endswith(".webhooks")
