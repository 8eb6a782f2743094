"""The serving loop inside an inference worker process (started by the Celery `--serve` step).

It pops call frames from Redis (see dispatch.py), runs them with the `workers.runtime` cache,
records the result and settles the charge (gateway.services), then pushes the reply frame.
Calls past their deadline are failed without running; any platform-side failure releases the
hold. One loop thread per process; a second thread sends heartbeats.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import redis
from django.conf import settings
from django.db import close_old_connections

from modelport.gateway import dispatch, services
from modelport.registry.models import ModelVersion
from modelport.registry.storage import artifact_store
from workers import wire
from workers.runtime import ModelCache

log = logging.getLogger(__name__)


@dataclass
class VersionInfo:
    version_id: int
    path: Path
    gpu_limit_bytes: int | None


def _read_meminfo() -> tuple[int, int]:
    total = avail = 0
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    total = int(line.split()[1]) * 1024
                elif line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    return total - avail, total


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class ServingLoop:
    def __init__(self, *, worker_id: str) -> None:
        self.worker_id = worker_id
        self.redis = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=10, socket_connect_timeout=5,
                                          health_check_interval=30)
        self.cache = ModelCache(host_budget_bytes=settings.MODELPORT_HOST_MEMORY_BUDGET_MB * 1024 * 1024,
                                threads=settings.MODELPORT_SESSION_THREADS)
        self.versions: dict[int, VersionInfo] = {}
        self.stopping = threading.Event()
        self.served = 0
        self._threads: list[threading.Thread] = []

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        for target, name in ((self._run, "mp-serving"), (self._heartbeat_loop, "mp-heartbeat")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("serving loop started on %s (hardware=%s)", self.worker_id, self.cache.hardware)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout=5)
        try:
            self.redis.hdel(dispatch.workers_key(), self.worker_id)
        except redis.RedisError:
            pass

    # --- heartbeats ------------------------------------------------------------------------
    def heartbeat(self) -> dict[str, Any]:
        host_used, host_total = _read_meminfo()
        cache_host, cache_device = self.cache.used_bytes()
        loaded = [int(k) for k in self.cache.loaded()]
        queues = [dispatch.version_queue(v) for v in loaded] + [dispatch.cold_queue()]
        pipe = self.redis.pipeline(transaction=False)
        for q in queues:
            pipe.llen(q)
        depths = pipe.execute()
        beat = {
            "id": self.worker_id, "host": socket.gethostname(), "pid": os.getpid(),
            "hardware": self.cache.hardware, "device": "cpu" if not self.cache.use_cuda else "cuda:0",
            "host_memory_used": host_used, "host_memory_total": host_total, "process_rss": _rss_bytes(),
            "cache_host_bytes": cache_host, "cache_device_bytes": cache_device,
            "host_budget_bytes": self.cache.host_budget,
            "loaded": loaded, "queue_depths": dict(zip(queues, depths, strict=True)),
            "served": self.served, "evictions": self.cache.evictions, "ts": time.time(),
        }
        self.redis.hset(dispatch.workers_key(), self.worker_id, json.dumps(beat))
        return beat

    def _heartbeat_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.heartbeat()
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)
            self.stopping.wait(settings.MODELPORT_HEARTBEAT_S)

    # --- serving ---------------------------------------------------------------------------
    def _run(self) -> None:
        while not self.stopping.is_set():
            queues = [dispatch.version_queue(int(v)) for v in self.cache.loaded()] + [dispatch.cold_queue()]
            try:
                item = self.redis.blpop(queues, timeout=1)
            except redis.RedisError as exc:
                log.warning("redis unavailable (%s); retrying", exc)
                self.stopping.wait(0.5)
                continue
            if item is None:
                continue
            close_old_connections()
            try:
                self.handle(item[1])
            except Exception:  # the loop must survive any single bad call; the call itself is failed
                log.exception("serving a call failed")

    def _version(self, version_id: int) -> VersionInfo:
        info = self.versions.get(version_id)
        if info is None:
            version = ModelVersion.objects.get(pk=version_id)
            limit = version.gpu_memory_limit_mb * 1024 * 1024 if version.gpu_memory_limit_mb else None
            info = VersionInfo(version_id, artifact_store().path(version.artifact_sha256), limit)
            self.versions[version_id] = info
        return info

    def _reply(self, header: dict[str, Any], payload: dict[str, Any],
               tensors: list[tuple[str, np.ndarray]] | None = None) -> None:
        key = header["reply"]
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(key, wire.pack(payload, tensors))
        pipe.expire(key, dispatch.REPLY_TTL_S)
        pipe.execute()

    def _fail(self, header: dict[str, Any], *, code: str, message: str, http_status: int) -> None:
        services.prediction_fail(prediction_id=header["id"], code=code, message=message)
        self._reply(header, {"ok": False, "status": http_status, "code": code, "message": message})

    def handle(self, frame: bytes) -> None:
        popped = time.time()
        header, tensors = wire.unpack(frame)
        if popped > header["deadline"]:
            self._fail(header, code="deadline", message="the call waited past its deadline in the queue",
                       http_status=503)
            return
        try:
            info = self._version(header["version_id"])
            model = self.cache.get(str(info.version_id), info.path, device_limit_bytes=info.gpu_limit_bytes)
        except Exception as exc:  # any load failure is the platform's: fail uncharged, say why
            log.exception("loading version %s failed", header["version_id"])
            self._fail(header, code="load_failed", message=f"the worker could not load the model: {exc}",
                       http_status=503)
            return
        started = time.time()
        t0 = time.perf_counter_ns()
        try:
            outputs = model.run(dict(tensors))
        except Exception as exc:  # onnxruntime's errors are untyped; the caller gets the reason
            self._fail(header, code="inference_error", message=f"the model failed on this input: {exc}",
                       http_status=400)
            return
        compute_us = (time.perf_counter_ns() - t0) // 1000
        native = header.get("protocol") == "native"
        prediction = services.prediction_succeed(
            prediction_id=header["id"], output=services.outputs_to_json(outputs) if native else None,
            compute_us=compute_us, queue_ms=(started - header["enqueued"]) * 1000.0, batch_size=1,
            hardware=self.cache.hardware, worker=self.worker_id, started_at=datetime.fromtimestamp(started, UTC),
        )
        self.served += 1
        if prediction is None:
            # The web tier (deadline) or a cancel got there first; nothing is charged.
            self._reply(header, {"ok": False, "status": 503, "code": "deadline",
                                 "message": "the call ended before its result arrived"})
            return
        if native:
            self._reply(header, {"ok": True, "prediction": services.prediction_data(prediction)})
        else:
            self._reply(header, {"ok": True, "charged": prediction.charged, "metrics": prediction.metrics},
                        outputs)
