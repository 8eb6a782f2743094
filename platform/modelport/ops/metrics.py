"""Prometheus metrics: definitions for the web tier and the serving workers.

Web tier (this process's default registry, scraped at `/metrics`, see ops/views.py):
  modelport_http_requests_total{method,route,status}       requests answered
  modelport_http_request_duration_seconds{method,route}    latency histogram (route = URL pattern)
  modelport_http_requests_in_progress{method}              requests being handled now
  modelport_http_exceptions_total{route,exception}         exceptions that escaped a view
The route label is the URL pattern (`api/v1/models/<str:owner>/<str:name>/predictions`), never the
path, so label cardinality stays bounded; unmatched paths are "<unmatched>".

Serving workers (Triton's metric names and meanings; the serving loop increments them, each
worker process exposes its own registry with `worker_metrics_start()` on
MODELPORT_WORKER_METRICS_ADDR:MODELPORT_WORKER_METRICS_PORT, internal only). Labels are
`model` ("owner/name") and `version` ("N"). prometheus_client adds `_total` to counter names
when it exposes them (`nv_inference_request_success_total`):
  nv_inference_request_success       requests that succeeded
  nv_inference_request_failure       requests that failed, by `reason` (deadline, load_failed,
                                     inference_error, ...)
  nv_inference_count                 inferences performed (a batch of 4 counts 4)
  nv_inference_exec_count            model executions (a batch of 4 counts 1)
  nv_inference_request_duration_us   cumulative end-to-end time in the worker (µs)
  nv_inference_queue_duration_us     cumulative time calls waited in the queue (µs)
  nv_inference_compute_infer_duration_us  cumulative model execution time (µs)
  nv_inference_pending_request_count gauge: calls waiting in the version's queue
  nv_gpu_memory_used_bytes / nv_gpu_memory_total_bytes  gauges by `gpu` (device index)
plus Modelport's own worker gauges (model cache use, loaded models); see `heartbeat_observe`.

Each uvicorn or Celery process has its own registry: run one web process per container (as the
compose file does) or configure prometheus_client's multiprocess mode.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

# --- web tier -------------------------------------------------------------------------------------
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "<unmatched>"

http_requests = Counter("modelport_http_requests", "HTTP requests answered by the web tier",
                        ["method", "route", "status"])
http_request_duration = Histogram(
    "modelport_http_request_duration_seconds", "Time to produce the response (streamed bodies excluded)",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
http_requests_in_progress = Gauge("modelport_http_requests_in_progress", "Requests being handled now",
                                  ["method"], multiprocess_mode="livesum")
http_exceptions = Counter("modelport_http_exceptions", "Exceptions that escaped a view", ["route", "exception"])
call_admissions = Counter("modelport_call_admissions", "Inference calls by admission path: 'cache' (resolved "
                          "from the process's cache on the event loop, checked and sent by one Redis script) "
                          "or 'thread' (the ordinary path)", ["path"])


# --- serving workers (Triton semantics) ----------------------------------------------------------
_MV = ["model", "version"]
inference_request_success = Counter("nv_inference_request_success", "Inference requests that succeeded", _MV)
inference_request_failure = Counter("nv_inference_request_failure", "Inference requests that failed",
                                    [*_MV, "reason"])
inference_count = Counter("nv_inference_count", "Inferences performed (batch items)", _MV)
inference_exec_count = Counter("nv_inference_exec_count", "Model executions (batches)", _MV)
inference_request_duration_us = Counter("nv_inference_request_duration_us",
                                        "Cumulative request time in the worker, queue included (µs)", _MV)
inference_queue_duration_us = Counter("nv_inference_queue_duration_us",
                                      "Cumulative time requests waited in the queue (µs)", _MV)
inference_compute_infer_duration_us = Counter("nv_inference_compute_infer_duration_us",
                                              "Cumulative model execution time (µs)", _MV)
inference_pending_request_count = Gauge("nv_inference_pending_request_count",
                                        "Requests waiting in a queue this worker takes from", ["queue"])
gpu_memory_used_bytes = Gauge("nv_gpu_memory_used_bytes", "GPU memory in use", ["gpu"])
gpu_memory_total_bytes = Gauge("nv_gpu_memory_total_bytes", "GPU memory on the device", ["gpu"])

worker_cache_host_bytes = Gauge("modelport_worker_cache_host_bytes", "Host memory held by loaded models")
worker_cache_device_bytes = Gauge("modelport_worker_cache_device_bytes", "Device memory held by loaded models")
worker_loaded_models = Gauge("modelport_worker_loaded_models", "Model versions loaded in this worker")
worker_process_rss_bytes = Gauge("modelport_worker_process_rss_bytes", "Resident memory of the worker process")


def record_success(*, model: str, version: int | str, batch_size: int, queue_us: int, compute_us: int,
                   request_us: int) -> None:
    """Count one successful execution of `batch_size` requests (`*_us` summed over the batch)."""
    success, count, executions, queue, compute, request = _success_children(model, str(version))
    success.inc(batch_size)
    count.inc(batch_size)
    executions.inc()
    queue.inc(max(queue_us, 0))
    compute.inc(max(compute_us, 0))
    request.inc(max(request_us, 0))


@lru_cache(maxsize=1024)  # labels() validates and locks per call: ~2 µs each, six per execution
def _success_children(model: str, version: str) -> tuple[Any, ...]:
    return tuple(metric.labels(model, version) for metric in (
        inference_request_success, inference_count, inference_exec_count, inference_queue_duration_us,
        inference_compute_infer_duration_us, inference_request_duration_us))


def record_failure(*, model: str, version: int | str, reason: str, count: int = 1) -> None:
    """Count failed requests; `reason` is the failure code (a small fixed set, not a message)."""
    inference_request_failure.labels(model, str(version), reason).inc(count)


def heartbeat_observe(beat: dict[str, Any]) -> None:
    """Set the worker gauges from a heartbeat dict (gateway/serving.py ServingLoop.heartbeat()).

    Optional heartbeat fields `device_memory_used` / `device_memory_total` (bytes, device 0) feed
    the GPU gauges when present.
    """
    worker_cache_host_bytes.set(beat.get("cache_host_bytes") or 0)
    worker_cache_device_bytes.set(beat.get("cache_device_bytes") or 0)
    worker_loaded_models.set(len(beat.get("loaded") or []))
    worker_process_rss_bytes.set(beat.get("process_rss") or 0)
    for queue, depth in (beat.get("queue_depths") or {}).items():
        inference_pending_request_count.labels(str(queue)).set(depth)
    if beat.get("device_memory_total"):
        gpu_memory_used_bytes.labels("0").set(beat.get("device_memory_used") or 0)
        gpu_memory_total_bytes.labels("0").set(beat["device_memory_total"])


def worker_metrics_start(*, port: int | None = None, addr: str | None = None) -> int | None:
    """Serve this process's metrics over HTTP (`GET /metrics`) from a daemon thread.

    Defaults come from settings MODELPORT_WORKER_METRICS_PORT (0: off, returns None) and
    MODELPORT_WORKER_METRICS_ADDR (127.0.0.1; in containers 0.0.0.0 on the private network, with
    the port never published). Returns the bound port. Call once per process.
    """
    from django.conf import settings

    port = settings.MODELPORT_WORKER_METRICS_PORT if port is None else port
    addr = settings.MODELPORT_WORKER_METRICS_ADDR if addr is None else addr
    if not port:
        return None
    server, _thread = start_http_server(port, addr=addr)
    return int(server.server_address[1])
