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

Data plane (web tier, computed from Redis when /metrics is read, never on the call path; see
`serving_queues_register`). Every serving worker takes calls from the same lists (any worker may
serve any version), so these are also each serving pool's pending depth; KEDA scales the pools on
`modelport_serving_pending_calls` (deploy/k8s/, docs/OPERATIONS.md):
  modelport_serving_pending_calls              gauge: calls waiting in all the call lists
  modelport_serving_queue_pending_calls{queue} gauge: calls waiting in one list (`mp:q:cold`,
                                               `mp:q:v<version id>`; only lists that hold calls)
  modelport_serving_workers{state}             gauge: serving workers by heartbeat, `live` or
                                               `stale` (older than MODELPORT_WORKER_STALE_S)

Each uvicorn or Celery process has its own registry: run one web process per container (as the
compose file does) or configure prometheus_client's multiprocess mode.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import redis
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

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


# --- data plane (web tier, read at scrape time) -----------------------------------------------------
class ServingQueues(Collector):
    """The data plane's pending calls and serving workers, read from Redis at each collection.

    One SCAN of the call lists (`<prefix>:q:*`, the keys gateway/dispatch.py pushes to), one
    pipelined LLEN per list that exists and one HGETALL of the heartbeats: ~1 ms per scrape,
    nothing on the call path. Redis down: the three metrics are left out of the exposition (so a
    scaler reading them reports an error and keeps the current replicas, rather than reading 0).
    """

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from modelport.gateway import dispatch

        try:
            client = dispatch.sync_redis()
            lists = sorted(k.decode() for k in client.scan_iter(f"{dispatch.key('q')}:*", count=1000))
            pipe = client.pipeline(transaction=False)
            for name in lists:
                pipe.llen(name)
            depths = pipe.execute() if lists else []
            beats = dispatch.live_workers(client.hgetall(dispatch.workers_key()))
        except (redis.RedisError, ValueError) as exc:  # Redis down, or a heartbeat that is not JSON
            log.warning("serving queue metrics unavailable: %s", exc)
            return
        total = GaugeMetricFamily("modelport_serving_pending_calls",
                                  "Calls waiting for a serving worker, all call lists together")
        total.add_metric([], float(sum(depths)))
        per_list = GaugeMetricFamily("modelport_serving_queue_pending_calls", "Calls waiting in one call list",
                                     labels=["queue"])
        for name, depth in zip(lists, depths, strict=True):
            per_list.add_metric([name], float(depth))
        workers = GaugeMetricFamily("modelport_serving_workers", "Serving workers by heartbeat state",
                                    labels=["state"])
        stale = sum(1 for beat in beats if beat["stale"])
        workers.add_metric(["live"], float(len(beats) - stale))
        workers.add_metric(["stale"], float(stale))
        yield from (total, per_list, workers)

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # collected only when scraped, never at registration


_serving_queues: ServingQueues | None = None
_serving_queues_lock = threading.Lock()


def serving_queues_register() -> None:
    """Add ServingQueues to this process's registry, once (the web tier's /metrics does it)."""
    global _serving_queues
    with _serving_queues_lock:
        if _serving_queues is None:
            _serving_queues = ServingQueues()
            REGISTRY.register(_serving_queues)
