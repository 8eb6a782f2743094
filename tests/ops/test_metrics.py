"""Metrics definitions and endpoints (ops/metrics.py, ops/views.py) in-process."""

from __future__ import annotations

import httpx
from django.test import override_settings
from modelport.ops import metrics

from tests import stack as stk
from tests.ops.conftest import make_staff

TOKEN = "t" * 40


def test_worker_metrics_server_exposes_triton_named_series():
    port = metrics.worker_metrics_start(port=stk.free_port(), addr="127.0.0.1")
    metrics.record_success(model="alice/mlp", version=3, batch_size=4, queue_us=100, compute_us=250,
                           request_us=400)
    metrics.record_failure(model="alice/mlp", version=3, reason="deadline")
    metrics.heartbeat_observe({"cache_host_bytes": 1024, "loaded": [1, 2], "queue_depths": {"mp:q:cold": 5},
                               "device_memory_used": 10, "device_memory_total": 100})
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert 'nv_inference_request_success_total{model="alice/mlp",version="3"} 4.0' in text
    assert 'nv_inference_count_total{model="alice/mlp",version="3"} 4.0' in text
    assert 'nv_inference_exec_count_total{model="alice/mlp",version="3"} 1.0' in text
    assert 'nv_inference_compute_infer_duration_us_total{model="alice/mlp",version="3"} 250.0' in text
    assert 'nv_inference_request_failure_total{model="alice/mlp",reason="deadline",version="3"} 1.0' in text
    assert 'nv_inference_pending_request_count{queue="mp:q:cold"} 5.0' in text
    assert 'nv_gpu_memory_total_bytes{gpu="0"} 100.0' in text
    assert "modelport_worker_loaded_models 2.0" in text


def test_worker_metrics_are_off_by_default(settings):
    settings.MODELPORT_WORKER_METRICS_PORT = 0
    assert metrics.worker_metrics_start() is None


def test_metrics_endpoint_auth(client, db):
    assert client.get("/metrics").status_code == 401
    with override_settings(MODELPORT_METRICS_TOKEN=TOKEN):
        assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}x"}).status_code == 401
        resp = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert resp.status_code == 200 and b"modelport_http_requests_total" in resp.content
    # Without a configured token, an empty-ish guess is not accepted either.
    assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 401
    client.force_login(make_staff("viewer", staff=False))
    assert client.get("/metrics").status_code == 403
    client.force_login(make_staff("boss"))
    assert client.get("/metrics").status_code == 200


def test_readyz_in_process(client, db):
    resp = client.get("/readyz")
    assert (resp.status_code, resp.json()) == (200, {"ready": True})
