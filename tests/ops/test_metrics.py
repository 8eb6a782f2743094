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


def test_metrics_expose_the_data_planes_pending_calls_and_workers(client, db):
    """What KEDA's metrics-api trigger reads (deploy/k8s/base/serving-cpu.yaml): the sum over
    every call list, read from Redis when /metrics is scraped."""
    import json
    import time

    from django.conf import settings
    from modelport.gateway import dispatch
    from prometheus_client.parser import text_string_to_metric_families

    r = dispatch.sync_redis()
    lists = [dispatch.cold_queue(), dispatch.version_queue(7)]
    try:
        r.rpush(lists[0], b"a", b"b", b"c")
        r.rpush(lists[1], b"d", b"e")
        now = time.time()
        r.hset(dispatch.workers_key(), mapping={
            "w-live": json.dumps({"id": "w-live", "ts": now}),
            "w-stale": json.dumps({"id": "w-stale", "ts": now - settings.MODELPORT_WORKER_STALE_S - 5})})
        with override_settings(MODELPORT_METRICS_TOKEN=TOKEN):
            resp = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert resp.status_code == 200
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(resp.content.decode()) for s in family.samples}
        assert samples[("modelport_serving_pending_calls", ())] == 5.0
        assert samples[("modelport_serving_queue_pending_calls", (("queue", lists[0]),))] == 3.0
        assert samples[("modelport_serving_queue_pending_calls", (("queue", lists[1]),))] == 2.0
        assert samples[("modelport_serving_workers", (("state", "live"),))] == 1.0
        assert samples[("modelport_serving_workers", (("state", "stale"),))] == 1.0
        r.delete(*lists)  # Redis drops empty lists: the per-list series go, the total reads 0
        with override_settings(MODELPORT_METRICS_TOKEN=TOKEN):
            text = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).content.decode()
        assert "\nmodelport_serving_pending_calls 0.0\n" in text
        assert "modelport_serving_queue_pending_calls{" not in text
    finally:
        r.delete(*lists, dispatch.workers_key())


def test_pending_calls_are_left_out_not_zero_when_redis_is_down(client, db):
    from modelport.gateway import dispatch

    dispatch.sync_redis.cache_clear()
    try:
        with override_settings(MODELPORT_METRICS_TOKEN=TOKEN, REDIS_URL=f"redis://127.0.0.1:{stk.free_port()}/0"):
            resp = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
            dispatch.sync_redis.cache_clear()
    finally:
        dispatch.sync_redis.cache_clear()
    assert resp.status_code == 200
    text = resp.content.decode()
    assert "modelport_http_requests_total" in text
    assert "modelport_serving_pending_calls" not in text  # a scaler reads an error, never a false 0
