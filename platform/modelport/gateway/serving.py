"""The serving loop inside an inference worker process (started by the Celery `--serve` step).

It pops call frames from Redis (see dispatch.py), runs them with the `workers.runtime` cache,
records each result and settles its charge (gateway.services), and pushes the reply frame:
after the settlement for calls admitted before they ran, before the recording for postpaid
calls (see `_record`).

- Dynamic batching: after popping a call for a batchable version, the loop takes more calls of
  that version from its list until `max_batch_size` rows or until the oldest has waited
  `max_queue_delay_ms` since it was enqueued (a call that finds its list empty runs at once:
  the delay is spent only while calls arrive together);
  calls with identical non-batch shapes run as one batch, split back per call, and each call is
  charged its share of the batch's compute time (by rows).
- Deadlines: a call popped after its deadline is failed (hold released) without running.
- Placement: versions with `min_replicas` are loaded until that many live workers host them;
  a version whose list backs up is loaded by idle workers that have room (scale-out).
- Any platform-side failure (load error, unexpected exception) fails the call uncharged.
One serving thread per process; a second thread sends heartbeats and does placement.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import redis
from django.conf import settings
from django.db import DatabaseError, IntegrityError, close_old_connections

from modelport.common.logging import request_id_bound
from modelport.gateway import authcache, dispatch, fastsql, services
from modelport.ops import metrics
from modelport.registry import services as registry_services
from modelport.registry.models import ModelVersion
from modelport.registry.storage import artifact_store
from workers import wire
from workers.runtime import LoadedModel, ModelCache
from workers.torch_runtime import ModelCallError, ModelKeepsCrashing, TorchModelSpec

log = logging.getLogger(__name__)

BACKLOG_TO_SCALE = 4  # queued calls on a version's list that make an idle worker load it too
GROUP_MAX = 16  # calls popped at once from one list (admitted and settled in one statement each)
FLUSH_S = 0.005  # within a popped group, settle and reply at least this often (long-running models)
# Postpaid admission: a deferred call whose account this worker saw, within BALANCE_VIEW_S, with
# at least POSTPAID_HEADROOM times the holds of its popped group runs without a prior admission
# statement; it is admitted and settled in one statement after the run (fastsql.RECORD_RESERVED).
POSTPAID_HEADROOM = 64
BALANCE_VIEW_S = 2.0
# A postpaid call's charge is committed before its answer leaves: the worker first keeps part of
# the account's balance as its reserve (billing.PostpaidReserve, which holds of other calls
# cannot take), runs a call postpaid only while what it has not spent of that reserve covers the
# call's hold, and its recording draws the charge from it. The reserve is topped up (after the
# replies) to RESERVE_CALLS calls' holds when under half of that, and returned after
# RESERVE_IDLE_S without postpaid calls of the account.
RESERVE_CALLS = 2 * GROUP_MAX
RESERVE_IDLE_S = 10.0


@dataclass
class VersionInfo:
    version_id: int
    path: Path
    gpu_limit_bytes: int | None
    max_batch_size: int
    max_queue_delay_s: float
    batchable: bool
    torch_spec: TorchModelSpec | None = None  # set for runtime "torch"


@dataclass
class Done:
    """An executed call waiting for its settlement (ServingLoop._finish_fast)."""
    call: Call
    share_us: int
    compute_us: int
    batch_size: int
    started: float


@dataclass
class Call:
    header: dict[str, Any]
    tensors: list[tuple[str, np.ndarray]]
    popped: float
    outputs: list[tuple[str, np.ndarray]] = field(default_factory=list)
    postpaid: bool = False  # runs and is answered before its admission, which its recording does
    answered: bool = False  # its reply is sent: whatever fails after, it is not failed
    exposure: int = 0  # µc of its worker's reserve it may draw (its hold, then its charge once run)

    @property
    def rows(self) -> int:
        """Rows along the batch axis (the first input's first dimension)."""
        return self.tensors[0][1].shape[0] if self.tensors else 1


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


def _batchable(signature: dict[str, Any] | None, runtime: str = "onnx") -> bool:
    """Calls may be batched when every input and output has a dynamic batch axis. On the torch
    runtime the outputs' other axes must be static too: a model whose output length depends on
    the input's values (a decoder that stops at an end token) would pad a batch's outputs."""
    if not signature:
        return False
    tensors = signature.get("inputs", []) + signature.get("outputs", [])
    if runtime == ModelVersion.Runtime.TORCH and any(
        d is None for t in signature.get("outputs", []) for d in t["shape"][1:]
    ):
        return False
    return bool(tensors) and all(t["shape"] and t["shape"][0] is None for t in tensors)


class ServingLoop:
    def __init__(self, *, worker_id: str) -> None:
        self.worker_id = worker_id
        self.redis = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=10, socket_connect_timeout=5,
                                          health_check_interval=30)
        self.cache = ModelCache(host_budget_bytes=settings.MODELPORT_HOST_MEMORY_BUDGET_MB * 1024 * 1024,
                                torch_memory_bytes=settings.MODELPORT_TORCH_MEMORY_MB * 1024 * 1024,
                                allow_unsandboxed=settings.MODELPORT_ALLOW_UNSANDBOXED,
                                threads=settings.MODELPORT_SESSION_THREADS)
        self.versions: dict[int, VersionInfo] = {}
        self.stopping = threading.Event()
        self.served = 0
        self.batches = 0
        self._threads: list[threading.Thread] = []
        self._backlog_seen: dict[int, int] = {}
        self.disabled: set[int] = set()
        self.multi_pop: bool | None = None  # BLMPOP available (Redis 7); probed on first pop
        # Account balances as this worker's admission and settlement statements last returned
        # them (account id → (balance µc, monotonic time)); cleared, with the cached version
        # settings, when the admission token changes (authcache's generation: saves of keys,
        # users, models and versions and any ledger adjustment that lowers a balance set it).
        self.balances: dict[int, tuple[int, float]] = {}
        self.admission_token: bytes | None = None
        # Rows of postpaid calls answered but not recorded yet (the database failed): see _record.
        self.unrecorded: list[dict[str, Any]] = []
        # Postpaid reserves (see RESERVE_CALLS), per account id: what this worker's reserve in
        # the database holds (as its own statements left it; never more than the row), what
        # its postpaid calls may still draw from it (holds of calls running, charges of calls
        # answered and not recorded), the largest hold of the account's recent calls, and
        # when a call last ran postpaid against it.
        self.reserve: dict[int, int] = {}
        self.exposure: dict[int, int] = {}
        self.call_hold: dict[int, int] = {}
        self.reserve_used: dict[int, float] = {}

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        metrics.worker_metrics_start()
        gc.freeze()  # startup's objects (Django, onnxruntime…) out of full collections: see config/asgi.py
        for target, name in ((self._run, "mp-serving"), (self._heartbeat_loop, "mp-heartbeat")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("serving loop started on %s (hardware=%s)", self.worker_id, self.cache.hardware)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._release_reserves(idle_s=0.0)
        try:
            self.redis.hdel(dispatch.workers_key(), self.worker_id)
        except redis.RedisError:
            pass

    # --- heartbeats and placement -----------------------------------------------------------
    def heartbeat(self) -> dict[str, Any]:
        host_used, host_total = _read_meminfo()
        cache_host, cache_device = self.cache.used_bytes()
        loaded = [int(k) for k in self.cache.loaded()]
        queues = sorted(k.decode() for k in self.redis.scan_iter(f"{dispatch.key('q')}:*", count=1000))
        pipe = self.redis.pipeline(transaction=False)
        for q in queues:
            pipe.llen(q)
        depths = dict(zip(queues, pipe.execute(), strict=True))
        beat = {
            "id": self.worker_id, "host": socket.gethostname(), "pid": os.getpid(),
            "hardware": self.cache.hardware, "device": "cpu" if not self.cache.use_cuda else "cuda:0",
            "host_memory_used": host_used, "host_memory_total": host_total, "process_rss": _rss_bytes(),
            "cache_host_bytes": cache_host, "cache_device_bytes": cache_device,
            "host_budget_bytes": self.cache.host_budget,
            "loaded": loaded, "queue_depths": depths,
            "served": self.served, "batches": self.batches, "evictions": self.cache.evictions, "ts": time.time(),
        }
        self.redis.hset(dispatch.workers_key(), self.worker_id, json.dumps(beat))
        metrics.heartbeat_observe(beat)
        return beat

    def _heartbeat_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                beat = self.heartbeat()
                self._unload_disabled()
                self._place(beat)
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)
            except Exception:  # placement must never stop heartbeats
                log.exception("placement failed")
            self.stopping.wait(settings.MODELPORT_HEARTBEAT_S)

    def _unload_disabled(self) -> None:
        disabled = {int(v) for v in self.redis.smembers(dispatch.key("disabled"))}
        self.disabled = disabled
        for key in self.cache.loaded():
            if int(key) in disabled and self.cache.evict(key):
                self.versions.pop(int(key), None)
                log.info("unloaded disabled version %s", key)

    def _still_disabled(self, version_id: int) -> bool:
        """The local set is refreshed once per heartbeat; confirm before refusing a call."""
        if self.redis.sismember(dispatch.key("disabled"), version_id):
            return True
        self.disabled.discard(version_id)
        return False

    def _place(self, beat: dict[str, Any]) -> None:
        """Load versions that want more replicas, or whose list is backing up."""
        close_old_connections()
        hosting: dict[int, int] = {}
        for other in dispatch.live_workers(self.redis.hgetall(dispatch.workers_key())):
            if not other["stale"]:
                for vid in other.get("loaded", []):
                    hosting[int(vid)] = hosting.get(int(vid), 0) + 1
        mine = set(beat["loaded"])
        wanted = ModelVersion.objects.filter(status=ModelVersion.Status.READY, disabled=False, min_replicas__gt=0)
        for version in wanted.only("pk", "min_replicas"):
            if version.pk not in mine and hosting.get(version.pk, 0) < version.min_replicas:
                self._preload(version.pk)
                return
        for queue, depth in beat["queue_depths"].items():
            tail = queue.rsplit(":", 1)[-1]
            if not tail.startswith("v"):
                continue
            vid = int(tail[1:])
            seen = self._backlog_seen.get(vid, 0) + 1 if depth >= BACKLOG_TO_SCALE else 0
            self._backlog_seen[vid] = seen
            if seen >= 2 and vid not in mine:
                self._preload(vid)
                return

    def _preload(self, version_id: int) -> None:
        try:
            info = self._version(version_id)
            self.cache.get(str(version_id), info.path, device_limit_bytes=info.gpu_limit_bytes,
                           torch_spec=info.torch_spec)
            log.info("placed version %s on %s", version_id, self.worker_id)
        except (ModelVersion.DoesNotExist, OSError, RuntimeError, ValueError, ModelCallError) as exc:
            log.warning("could not place version %s: %s", version_id, exc)

    # --- serving ---------------------------------------------------------------------------
    def _run(self) -> None:
        while not self.stopping.is_set():
            queues = [dispatch.version_queue(int(v)) for v in self.cache.loaded()] + [dispatch.cold_queue()]
            try:
                popped = self._pop(queues)
                if popped is None:
                    self._release_reserves(idle_s=RESERVE_IDLE_S)
                    continue
                close_old_connections()
                calls = self._collect(*popped)
            except redis.RedisError as exc:
                log.warning("redis unavailable (%s); retrying", exc)
                self.stopping.wait(0.5)
                continue
            try:
                self.serve(self._admit(calls))
            except Exception:  # the loop must survive anything; the calls not answered are failed
                log.exception("serving failed")
                for call in calls:
                    if not call.answered:
                        self._fail(call, code="internal", message="the worker failed while serving this call",
                                   http_status=503)

    def _pop(self, queues: list[str]) -> tuple[str, list[bytes]] | None:
        """Wait up to 1 s for calls: (the list they came from, up to GROUP_MAX of its frames).
        One round trip with BLMPOP (Redis 7); one call at a time with BLPOP on older servers
        (the embedded Redis of `make run`)."""
        if self.multi_pop is None:
            self.multi_pop = int(str(self.redis.info("server").get("redis_version", "0")).split(".")[0]) >= 7
        # The admission token is read in the same round trip, right after the pop returns.
        pipe = self.redis.pipeline(transaction=False)
        if self.multi_pop:
            pipe.blmpop(1, len(queues), *queues, direction="LEFT", count=GROUP_MAX)
        else:
            pipe.blpop(queues, timeout=1)
        pipe.get(authcache.generation_key())
        try:
            got, token = pipe.execute()
        except redis.ResponseError:  # a server without BLMPOP after all
            self.multi_pop = False
            return None
        if token != self.admission_token:  # something that admission or serving reads changed
            self.balances.clear()
            self.versions.clear()  # batching settings saved since are read again
            self.admission_token = token
        if got is None:
            return None
        return (got[0].decode(), got[1]) if self.multi_pop else (got[0].decode(), [got[1]])

    def _collect(self, queue: str, frames: list[bytes]) -> list[Call]:
        """The popped calls plus, for a batchable version's own list, more calls of it that
        arrive within the version's queue delay (up to max_batch_size rows). Calls that were
        waiting together are served together whatever their version's batching: one admission
        and one settlement statement for the group (execution still follows max_batch_size)."""
        now = time.time()
        calls = [Call(*wire.unpack(frame), now) for frame in frames]
        if queue == dispatch.cold_queue():
            return calls
        try:
            info = self._version(calls[0].header["version_id"])
        except ModelVersion.DoesNotExist:
            return calls
        if not info.batchable or info.max_batch_size <= 1:
            return calls
        rows = sum(c.rows for c in calls)
        oldest = min(c.header["enqueued"] for c in calls)
        # BLMPOP took every call that was waiting when it took fewer than GROUP_MAX: the list
        # was empty then, so the first LPOP round trip would find nothing.
        drained = self.multi_pop and len(calls) < GROUP_MAX
        while rows < info.max_batch_size:
            frames = [] if drained else self.redis.lpop(queue, info.max_batch_size - len(calls)) or []
            drained = False
            if not frames:
                # A call that found no other waiting runs at once: the delay only pays when calls
                # are arriving together (measured: a fixed 2 ms wait was a third of the c=1 latency).
                # As in Triton, the delay counts from when the oldest call was enqueued, not from
                # the pop: calls that already waited that long in the list (a busy worker) run at
                # once instead of waiting again (measured: holding popped groups for the full delay
                # made the small CNN 0.87x slower batched than unbatched at c=32).
                remaining = min(oldest + info.max_queue_delay_s - time.time(), info.max_queue_delay_s)
                if len(calls) == 1 or remaining <= 0.0005:
                    break
                item = self.redis.blpop([queue], timeout=remaining)
                if item is None:
                    break
                frames = [item[1]]
            for raw in frames:
                calls.append(Call(*wire.unpack(raw), time.time()))
                rows += calls[-1].rows
        return calls

    def _admit(self, calls: list[Call]) -> list[Call]:
        """Admit the deferred calls among `calls` (services.prediction_admit's `defer`): one
        statement for the group; a group an account cannot cover as a whole is retried call by
        call. Calls refused are answered here (402, or 503 when the web already gave up on them)
        and dropped; the rest are returned to be served."""
        deferred = [c for c in calls if "admit" in c.header]
        if not deferred:
            return calls
        self._mark_postpaid(deferred)
        deferred = [c for c in deferred if not c.postpaid]
        if not deferred:
            return calls
        balances: dict[int, int] = {}
        try:
            admitted = fastsql.admit_many([c.header["admit"] for c in deferred], balances=balances)
        except IntegrityError:  # raced the web's abandon(): go call by call
            admitted = set()
        refused = [c for c in deferred if c.header["id"] not in admitted]
        if len(deferred) > 1:
            for call in refused:
                try:
                    admitted |= fastsql.admit_many([call.header["admit"]], balances=balances)
                except IntegrityError:
                    pass
        self._saw_balances(balances)
        kept = []
        for call in calls:
            if "admit" not in call.header or call.postpaid or call.header["id"] in admitted:
                kept.append(call)
            else:
                self._refuse(call)
        return kept

    def _mark_postpaid(self, deferred: list[Call]) -> None:
        """Mark the calls that may run before their admission: those of accounts this worker saw
        recently with at least POSTPAID_HEADROOM times the group's holds, while the unspent part
        of its reserve of the account covers those holds (which it then counts as spent until
        the calls are recorded). They are answered and then admitted by their recording
        statement (`_record`), which draws their charges from the reserve; every other call is
        admitted before it runs, so an account near empty always gets its 402 before anything
        runs."""
        if not fastsql.available():
            return
        holds: dict[int, int] = {}
        for call in deferred:
            row = call.header["admit"]
            account_id, hold = row["account_id"], int(row["hold_amount"])
            holds[account_id] = holds.get(account_id, 0) + hold
            self.call_hold[account_id] = max(hold, self.call_hold.get(account_id, 0))  # sizes the reserve
        now = time.monotonic()
        allowed = set()
        for account_id, total in holds.items():
            seen = self.balances.get(account_id)
            if seen is None or now - seen[1] > BALANCE_VIEW_S or seen[0] < POSTPAID_HEADROOM * total:
                continue
            if total and self.reserve.get(account_id, 0) - self.exposure.get(account_id, 0) < total:
                continue  # not covered by this worker's reserve (yet: see _top_up)
            allowed.add(account_id)
            self.reserve_used[account_id] = now
        for call in deferred:
            row = call.header["admit"]
            if row["account_id"] in allowed:
                call.postpaid = True
                self._expose(row["account_id"], int(row["hold_amount"]), call)

    def _expose(self, account_id: int, amount: int, call: Call) -> None:
        """Set `call`'s exposure on its account's reserve to `amount` µc."""
        self.exposure[account_id] = self.exposure.get(account_id, 0) + amount - call.exposure
        call.exposure = amount

    def _top_up(self, account_ids: set[int]) -> None:
        """Top up this worker's reserves of `account_ids` that the account's recent balance
        allows (POSTPAID_HEADROOM calls' holds) and that are under half of RESERVE_CALLS calls'
        holds, to that. After the replies: off the callers' wait."""
        now = time.monotonic()
        for account_id in account_ids:
            hold = self.call_hold.get(account_id, 0)
            seen = self.balances.get(account_id)
            if not hold or seen is None or now - seen[1] > BALANCE_VIEW_S or seen[0] < POSTPAID_HEADROOM * hold:
                continue
            target = RESERVE_CALLS * hold
            unspent = self.reserve.get(account_id, 0) - self.exposure.get(account_id, 0)
            if unspent >= target // 2:
                continue
            try:
                added = services.billing.reserve_top_up(account_id=account_id, worker=self.worker_id,
                                                        amount=target - unspent)
            except DatabaseError as exc:
                log.warning("reserve of account %s not topped up: %s", account_id, exc)
                return
            if added:
                self.reserve[account_id] = self.reserve.get(account_id, 0) + target - unspent
                self.reserve_used.setdefault(account_id, now)

    def _release_reserves(self, *, idle_s: float) -> None:
        """Return the reserves no postpaid call used for `idle_s` seconds and none still draws on."""
        if self.unrecorded:
            return  # their recordings draw on the reserves
        now = time.monotonic()
        for account_id in list(self.reserve):  # a view reset to 0 may still have a row to return
            if self.exposure.get(account_id, 0) or now - self.reserve_used.get(account_id, 0.0) < idle_s:
                continue
            try:
                services.billing.reserve_release(account_id=account_id, worker=self.worker_id)
            except DatabaseError as exc:
                log.warning("reserve of account %s not returned: %s", account_id, exc)
                return
            self.reserve.pop(account_id, None)
            self.reserve_used.pop(account_id, None)
            self.call_hold.pop(account_id, None)

    def _saw_balances(self, balances: dict[int, int]) -> None:
        now = time.monotonic()
        for account_id, balance in balances.items():
            self.balances[account_id] = (balance, now)

    def _refuse(self, call: Call) -> None:
        row = call.header["admit"]
        balance, exists = fastsql.refusal_facts(prediction_id=row["id"], account_id=row["account_id"])
        with request_id_bound(call.header.get("request_id")):
            if exists:  # the web recorded it as failed at its deadline: nobody waits for this reply
                log.info("call %s ended before admission", row["id"])
                self._reply(call.header, {"ok": False, "status": 503, "code": "deadline",
                                          "message": "the call ended before it could run"})
                return
            problem = services.insufficient_credits(balance=balance, required=row["hold_amount"])
            log.info("call %s refused: %s", row["id"], problem.detail)
            self._reply(call.header, {"ok": False, "status": 402, "code": "insufficient_credits",
                                      "message": problem.detail, "extra": problem.extra})

    def _version(self, version_id: int) -> VersionInfo:
        info = self.versions.get(version_id)
        if info is None:
            version = ModelVersion.objects.get(pk=version_id)
            limit = version.gpu_memory_limit_mb * 1024 * 1024 if version.gpu_memory_limit_mb else None
            store = artifact_store()
            info = VersionInfo(version_id, store.path(version.artifact_sha256), limit,
                               max_batch_size=version.max_batch_size,
                               max_queue_delay_s=version.max_queue_delay_ms / 1000.0,
                               batchable=_batchable(version.signature, version.runtime))
            if version.runtime == ModelVersion.Runtime.TORCH:
                info.torch_spec = TorchModelSpec(
                    fmt=version.format, artifact=store.path(version.upload_sha256),
                    source=store.path(version.source_sha256) if version.source_sha256 else None,
                    entrypoint=version.entrypoint, init_kwargs=version.init_kwargs or {},
                    signature=version.signature or {"inputs": [], "outputs": []},
                    artifact_suffix=Path(version.upload_filename).suffix)
            self.versions[version_id] = info
        return info

    def _reply(self, header: dict[str, Any], payload: dict[str, Any],
               tensors: list[tuple[str, np.ndarray]] | None = None) -> None:
        key = header["reply"]
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(key, wire.pack(payload, tensors))
        pipe.expire(key, dispatch.REPLY_TTL_S)
        pipe.execute()

    def _fail(self, call: Call, *, code: str, message: str, http_status: int) -> None:
        with request_id_bound(call.header.get("request_id")):
            log.info("call %s failed: %s (%s)", call.header["id"], code, message)
            if call.postpaid:  # never admitted: recorded failed, nothing held (unless the web did)
                services.prediction_abandon(row=call.header["admit"], code=code, message=message)
                self._expose(call.header["admit"]["account_id"], 0, call)  # it draws nothing
            else:
                services.prediction_fail(prediction_id=call.header["id"], code=code, message=message)
            metrics.record_failure(model=str(call.header.get("model", "")), version=call.header["version_id"],
                                   reason=code)
            self._reply(call.header, {"ok": False, "status": http_status, "code": code, "message": message})

    def serve(self, calls: list[Call]) -> None:
        settled: list[Done] = []  # executed calls whose settlement goes in one statement
        live = []
        for call in calls:
            if call.popped > call.header["deadline"]:
                self._fail(call, code="deadline", message="the call waited past its deadline in the queue",
                           http_status=503)
            elif call.header["version_id"] in self.disabled and self._still_disabled(call.header["version_id"]):
                self._fail(call, code="disabled", message="this model version was disabled", http_status=503)
            else:
                live.append(call)
        by_version: dict[int, list[Call]] = {}
        for call in live:
            by_version.setdefault(call.header["version_id"], []).append(call)
        for version_id, group in by_version.items():
            try:
                info = self._version(version_id)
                model = self.cache.get(str(version_id), info.path, device_limit_bytes=info.gpu_limit_bytes,
                                       torch_spec=info.torch_spec)
            except Exception as exc:  # any load failure is the platform's: fail uncharged, say why
                log.exception("loading version %s failed", version_id)
                for call in group:
                    self._fail(call, code="load_failed", message=f"the worker could not load the model: {exc}",
                               http_status=503)
                continue
            for batch in self._shape_groups(group, info):
                self._execute(model, batch, settled)
                if settled and time.time() - settled[0].started > FLUSH_S:
                    self._finish_fast(settled)
                    settled = []
        if settled:
            self._finish_fast(settled)

    @staticmethod
    def _shape_groups(calls: list[Call], info: VersionInfo) -> list[list[Call]]:
        """Execution batches: calls with identical non-batch shapes, up to max_batch_size rows
        each (a call larger than that runs alone); every call alone when batching is off."""
        if not info.batchable or info.max_batch_size <= 1:
            return [[c] for c in calls]
        chunks: list[list[Call]] = []
        open_chunk: dict[tuple[Any, ...], tuple[list[Call], int]] = {}  # shape → (chunk, its rows)
        for call in calls:
            key = tuple((n, a.dtype.str, a.shape[1:]) for n, a in call.tensors)
            chunk, rows = open_chunk.get(key, ([], 0))
            if chunk and rows + call.rows > info.max_batch_size:
                chunk, rows = [], 0
            if not chunk:
                chunks.append(chunk)
            chunk.append(call)
            open_chunk[key] = (chunk, rows + call.rows)
        return chunks

    def _execute(self, model: LoadedModel, batch: list[Call], settled: list[Done]) -> None:
        started = time.time()
        if len(batch) == 1:
            feeds = dict(batch[0].tensors)
        else:
            names = [n for n, _ in batch[0].tensors]
            feeds = {n: np.concatenate([dict(c.tensors)[n] for c in batch], axis=0) for n in names}
        # A torch-runtime call waits for its process at most until the batch's first deadline.
        deadline = time.monotonic() + (min(c.header["deadline"] for c in batch) - time.time()) \
            if model.runtime == ModelVersion.Runtime.TORCH else None
        t0 = time.perf_counter_ns()
        try:
            outputs = model.run(feeds, deadline)
        except ModelCallError as exc:  # the torch runtime's faults: uncharged, with their code
            self._model_fault(model, batch, exc)
            return
        except Exception as exc:  # onnxruntime's errors are untyped; the caller gets the reason
            for call in batch:
                self._fail(call, code="inference_error", message=f"the model failed on this input: {exc}",
                           http_status=400)
            return
        compute_us = (time.perf_counter_ns() - t0) // 1000
        self.batches += 1
        total_rows = sum(c.rows for c in batch)
        first = batch[0].header
        metrics.record_success(model=str(first.get("model", "")), version=first["version_id"], batch_size=len(batch),
                               queue_us=int(sum(started - c.header["enqueued"] for c in batch) * 1e6),
                               compute_us=compute_us,
                               request_us=int(sum(time.time() - c.header["enqueued"] for c in batch) * 1e6))
        offset = 0
        for call in batch:
            if len(batch) == 1:
                call.outputs = outputs
            else:
                call.outputs = [(n, a[offset:offset + call.rows]) for n, a in outputs]
            offset += call.rows
            share = compute_us * call.rows // total_rows if total_rows else compute_us
            quote = call.header.get("quote") or {}
            if fastsql.available() and "created" in call.header and not quote.get("royalty") \
                    and not call.header.get("webhook"):
                settled.append(Done(call, share_us=share, compute_us=compute_us, batch_size=len(batch),
                                    started=started))
            else:
                self._finish(call, compute_us=compute_us, share_us=share, batch_size=len(batch), started=started)

    def _model_fault(self, model: LoadedModel, batch: list[Call], exc: ModelCallError) -> None:
        """Fail the batch's calls (uncharged) with the fault's code: the model raised (500), its
        process died or hung (503; restarted for the next call) or keeps crashing (the version
        becomes failed with the reason and is unloaded)."""
        message = str(exc)
        if isinstance(exc, ModelKeepsCrashing):
            version_id = batch[0].header["version_id"]
            log.error("version %s keeps crashing: %s", version_id, message)
            self.cache.evict(model.key)
            self.versions.pop(version_id, None)
            close_old_connections()
            registry_services.version_break(version_id=version_id, code=exc.code, message=message)
        for call in batch:
            self._fail(call, code=exc.code, message=message, http_status=exc.http_status)

    def _finish(self, call: Call, *, compute_us: int, share_us: int, batch_size: int, started: float) -> None:
        with request_id_bound(call.header.get("request_id")):
            self._finish_call(call, compute_us=compute_us, share_us=share_us, batch_size=batch_size, started=started)

    def _finish_call(self, call: Call, *, compute_us: int, share_us: int, batch_size: int, started: float) -> None:
        header = call.header
        native = header.get("protocol") == "native"
        prediction = services.prediction_succeed(
            prediction_id=header["id"], output=services.outputs_to_json(call.outputs) if native else None,
            compute_us=compute_us, compute_share_us=share_us, queue_ms=(started - header["enqueued"]) * 1000.0,
            batch_size=batch_size, hardware=self.cache.hardware, worker=self.worker_id,
            started_at=datetime.fromtimestamp(started, UTC),
        )
        self.served += 1
        log.info("call %s served: batch %d, compute %d us", header["id"], batch_size, compute_us)
        if prediction is None:
            # The web tier (deadline) or a cancel got there first; nothing is charged.
            self._reply(header, {"ok": False, "status": 503, "code": "deadline",
                                 "message": "the call ended before its result arrived"})
            return
        if native:
            self._reply(header, {"ok": True, "prediction": services.prediction_data(prediction)})
        else:
            self._reply(header, {"ok": True, "charged": prediction.charged, "metrics": prediction.metrics},
                        call.outputs)

    def _finish_fast(self, done: list[Done]) -> None:
        """Settle executed calls in one statement (gateway/fastsql.py) and send every reply in
        one Redis pipeline, rendering from what the frames carry — no ORM round trips. Same
        outcome per call as services.prediction_succeed. Calls admitted before they ran are
        settled before their replies go; postpaid calls are recorded after (`_record`)."""
        now = time.time()
        completed_at = datetime.fromtimestamp(now, UTC)
        rows = []
        for d in done:
            header = d.call.header
            q = header["quote"]
            price = services.billing.Quote(hardware=self.cache.hardware, base=q["base"], per_second=q["per_second"],
                                           royalty=0).price(d.share_us)
            native = header.get("protocol") == "native"
            rows.append({
                "id": header["id"], "price": price, "started_at": datetime.fromtimestamp(d.started, UTC),
                "completed_at": completed_at,
                "output": services.outputs_to_json(d.call.outputs) if native else None,
                "metrics": {"queue_ms": round((d.started - header["enqueued"]) * 1000.0, 3),
                            "compute_ms": round(d.compute_us / 1000.0, 3),
                            "total_ms": round((now - header["created"]) * 1000.0, 3), "batch_size": d.batch_size},
            })
        held = [row for d, row in zip(done, rows, strict=True) if not d.call.postpaid]
        charged_by_id = fastsql.settle_many(rows=held, hardware=self.cache.hardware, worker=self.worker_id) \
            if held else {}
        served = self._served_rows([(d, row) for d, row in zip(done, rows, strict=True) if d.call.postpaid])
        for pid, full in served.items():  # what the recording below charges, unless the account ran dry
            charged_by_id[pid] = full["charged"]
        self.served += len(done)
        pipe = self.redis.pipeline(transaction=False)
        unrecorded = self.unrecorded + list(served.values())
        if served:  # first: a reply never leaves without the journal entry that records its call
            pipe.set(dispatch.journal_key(self.worker_id), fastsql.rows_json(unrecorded), ex=dispatch.JOURNAL_TTL_S)
        for d, row in zip(done, rows, strict=True):
            header = d.call.header
            charged = charged_by_id.get(header["id"])
            if charged is None:  # the web tier (deadline) or a cancel got there first: no charge
                payload: dict[str, Any] = {"ok": False, "status": 503, "code": "deadline",
                                           "message": "the call ended before its result arrived"}
                tensors = None
            elif header.get("protocol") == "native":
                payload = {"ok": True, "prediction": services.prediction_json(
                    pid=header["id"], model=header["model"], version=header["version_number"], status="succeeded",
                    output=row["output"], error=None, metrics=row["metrics"], charged=charged, royalty=0,
                    created_at=datetime.fromtimestamp(header["created"], UTC), started_at=row["started_at"],
                    completed_at=completed_at)}
                tensors = None
            else:
                payload, tensors = {"ok": True, "charged": charged, "metrics": row["metrics"]}, d.call.outputs
            pipe.rpush(header["reply"], wire.pack(payload, tensors))
            pipe.expire(header["reply"], dispatch.REPLY_TTL_S)
        pipe.execute()
        for d in done:  # logged once answered: the log lines are off the callers' wait
            d.call.answered = True
            with request_id_bound(d.call.header.get("request_id")):
                log.info("call %s served: batch %d, compute %d us", d.call.header["id"], d.batch_size, d.compute_us)
        self._record(unrecorded)
        self._top_up({d.call.header["admit"]["account_id"] for d in done if "admit" in d.call.header})

    def _served_rows(self, done: list[tuple[Done, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
        """The complete rows (RECORD_MANY's) of executed postpaid calls, by prediction id."""
        full = {}
        for d, row in done:
            admit = d.call.header["admit"]
            charged = min(row["price"], int(admit["hold_amount"]))
            self._expose(admit["account_id"], charged, d.call)  # until its recording draws it
            full[admit["id"]] = {
                **admit, "status": "succeeded", "output": row["output"], "metrics": row["metrics"],
                "hardware": self.cache.hardware, "worker": self.worker_id, "started_at": row["started_at"],
                "completed_at": row["completed_at"], "charged": charged, "hold_amount": charged, "royalty": 0}
        return full

    def _record(self, rows: list[dict[str, Any]]) -> None:
        """Admit and settle, in one statement, postpaid calls whose replies are already sent
        (services.predictions_record_served), drawing their charges from this worker's
        reserves. Recording after the reply takes the statement (~0.7 ms at c=1, a quarter of
        the call) off the caller's wait; the reserve, which holds of other calls cannot take,
        is what makes the answered charge certain to be paid. Nothing is lost if this worker
        dies before the statement commits: the rows went to Redis with the replies (this
        worker's journal, written ahead of them in the same pipeline), and the reaper records
        them (services.predictions_reap) before it returns the dead worker's reserves. A reader
        of the prediction in between finds it in the journal and waits for its row
        (api.prediction_for). Should the database fail, the rows stay in `unrecorded` (and in
        the journal) and go again with the next group."""
        if not rows:
            return
        balances: dict[int, int] = {}
        self.unrecorded = rows  # until the statement commits, whatever it raises
        try:
            _, dry = services.predictions_record_served(rows=rows, balances=balances)
        except DatabaseError as exc:
            log.warning("recording %d answered calls failed (%s); retried with the next group", len(rows), exc)
            return
        self.unrecorded = []
        drawn: dict[int, int] = {}
        for row in rows:
            drawn[row["account_id"]] = drawn.get(row["account_id"], 0) + int(row["charged"])
        for account_id, amount in drawn.items():
            self.exposure[account_id] = self.exposure.get(account_id, 0) - amount
            if account_id in self.reserve:  # an upper bound of what the row lost (exact as a rule)
                self.reserve[account_id] -= amount
        for account_id in dry:  # not (all) drawn from the reserve: trust no view of the account
            self.balances.pop(account_id, None)  # admit first from now on
            self.reserve[account_id] = 0  # what the database holds is at least this
        self._saw_balances(balances)
