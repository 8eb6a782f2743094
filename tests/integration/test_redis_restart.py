"""Redis restarted under load: calls during the outage fail cleanly (503, nothing charged) and
the platform serves again afterwards without manual steps. Uses a private redis-server (started
and stopped by PID here), never the machine's shared one."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import httpx
import pytest

from tests import stack as stk
from workers.demo import mlp_onnx

pytestmark = pytest.mark.integration


def _redis(port: int, tmp_path) -> subprocess.Popen:
    proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True).stdout.strip() == "PONG":
            return proc
        time.sleep(0.05)
    raise RuntimeError("private redis did not start")


def test_redis_restart_mid_load(user_api, live, tmp_path):
    api = user_api("resilient")
    assert api.post("/api/v1/models", json={"name": "mlp"}).status_code == 201
    assert api.upload("resilient", "mlp", fmt="onnx", artifact=mlp_onnx(tmp_path / "m.onnx",
                                                                         sizes=(16, 8, 4))).status_code == 202
    assert api.wait_version("resilient", "mlp", 1)["status"] == "ready"
    key = api.http.headers["Authorization"]

    port = stk.free_port()
    redis_proc = _redis(port, tmp_path)
    env = {**live.env, "REDIS_URL": f"redis://127.0.0.1:{port}/0", "MODELPORT_REDIS_PREFIX": "mprestart"}
    web_port = stk.free_port()
    web = stk.start("web-restart", [sys.executable, "-m", "uvicorn", "modelport.config.asgi:application",
                                    "--host", "127.0.0.1", "--port", str(web_port), "--no-access-log"], env)
    worker = stk.start("serve-restart", stk.celery_argv("serve-restart", ["mprestart.control"], serve=True), env)
    url = f"http://127.0.0.1:{web_port}/api/v1/models/resilient/mlp/predictions"
    body = {"input": {"x": [[0.5] * 16]}}
    headers = {"Authorization": key, "Prefer": "wait", "Modelport-Deadline-Ms": "3000"}

    def call() -> int:
        try:
            return httpx.post(url, json=body, headers=headers, timeout=20).status_code
        except httpx.HTTPError:
            return -1

    try:
        stk.wait_http(f"http://127.0.0.1:{web_port}/healthz", web)
        deadline = time.monotonic() + 60
        while call() != 200:
            assert time.monotonic() < deadline, worker.log()[-3000:]
            time.sleep(0.3)
        before = api.balance_micro()
        redis_proc.kill()
        redis_proc.wait()
        during = [call() for _ in range(3)]
        assert all(code in (503, 429) for code in during), during
        assert api.balance_micro() == before  # nothing charged while the broker was down
        redis_proc = _redis(port, tmp_path)
        deadline = time.monotonic() + 60
        recovered = False
        while time.monotonic() < deadline:
            if call() == 200:
                recovered = True
                break
            time.sleep(0.5)
        assert recovered, worker.log()[-3000:]
        from modelport.billing.models import CreditAccount
        from modelport.billing.services import ledger_drift
        from modelport.gateway.services import predictions_reap

        time.sleep(4)
        predictions_reap(grace_s=0)
        assert ledger_drift(account=CreditAccount.objects.get(user__username="resilient")) == 0
        from modelport.gateway.models import Prediction

        assert not Prediction.objects.filter(user__username="resilient", status__in=["starting", "processing"]).exists()
    finally:
        web.stop()
        worker.stop()
        redis_proc.kill()
        redis_proc.wait()
