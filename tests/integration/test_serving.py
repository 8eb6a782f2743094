"""Issue 4: serving on workers — batching, queue policy, deadlines, eviction, placement, faults."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from django.test import override_settings
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import call_admissions, staff_key, wait_recorded
from workers.demo import mlp_onnx

pytestmark = pytest.mark.integration


def sum_model(path: Path) -> Path:
    """y[b] = 2 * sum(x[b, :]) for x float32 [batch, seq] (both axes dynamic)."""
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["x2"]),
         helper.make_node("ReduceSum", ["x2", "axes"], ["y"], keepdims=0)],
        "sum", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])], initializer=[two, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def ready_model(api, name: str, path: Path) -> int:
    assert api.post("/api/v1/models", json={"name": name}).status_code == 201
    resp = api.upload(api.username, name, fmt="onnx", artifact=path)
    assert resp.status_code == 202, resp.text
    version = api.wait_version(api.username, name, resp.json()["version"])
    assert version["status"] == "ready", version
    from modelport.registry.models import ModelVersion

    return ModelVersion.objects.get(model__name=name, number=version["version"]).pk


def call(base_url: str, key: str, model: str, payload: dict, **headers: str) -> httpx.Response:
    return httpx.post(f"{base_url}/api/v1/models/{model}/predictions", json={"input": payload},
                      headers={"Authorization": key, "Prefer": "wait", **headers}, timeout=60)


def drift(username: str) -> int:
    from modelport.billing.models import CreditAccount
    from modelport.billing.services import ledger_drift

    return ledger_drift(account=CreditAccount.objects.get(user__username=username))


def summer_served(user_api, fleet, tmp_path, username: str, **serving: float) -> tuple[object, object, str]:
    """`username`'s sum model with the version settings `serving`, one fleet worker serving it:
    (api, worker, key)."""
    from modelport.registry.models import ModelVersion

    api = user_api(username)
    vid = ready_model(api, "summer", sum_model(tmp_path / "sum.onnx"))
    ModelVersion.objects.filter(pk=vid).update(**serving)
    worker = fleet.start_worker("serve", serve=True)
    fleet.wait_for_serving(worker)
    return api, worker, api.http.headers["Authorization"]


def piled_up(worker, send, payloads: list, *, threads: int, hold_s: float = 1.0) -> tuple[list, float]:
    """Send `payloads` concurrently while `worker` is paused, so they wait in its list together
    (as behind a busy worker), resume it after `hold_s`: (responses, seconds from resume)."""
    worker.pause()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(send, p) for p in payloads]
        time.sleep(hold_s)
        resumed = time.monotonic()
        worker.resume()
        responses = [f.result() for f in futures]
    return responses, time.monotonic() - resumed


def test_batching_mixed_shapes_each_output_is_its_own(user_api, fleet, tmp_path):
    api, worker, key = summer_served(user_api, fleet, tmp_path, "batcher", max_batch_size=16, max_queue_delay_ms=30)
    assert call(fleet.base_url, key, "batcher/summer", {"x": [[1.0, 2.0]]}).status_code == 200  # warm, placed

    rng = np.random.default_rng(5)
    jobs = []
    for i in range(48):
        rows, seq = 1 + i % 3, (3, 5, 8)[i % 3 if i % 2 else (i // 2) % 3]
        jobs.append(rng.integers(-50, 50, size=(rows, seq)).astype(np.float32))
    before = api.balance_micro()
    # The worker runs a call that finds its list empty at once (the delay is only spent while
    # calls arrive together), and it can outrun this client: the calls are sent while it is paused.
    responses, _ = piled_up(worker, lambda x: call(fleet.base_url, key, "batcher/summer", {"x": x.tolist()}), jobs,
                            threads=24, hold_s=1.5)
    charged = 0
    batch_sizes = []
    for x, resp in zip(jobs, responses, strict=True):
        assert resp.status_code == 200, resp.text
        body = resp.json()
        np.testing.assert_allclose(body["output"]["y"], 2 * x.sum(axis=1), rtol=1e-6)
        batch_sizes.append(body["metrics"]["batch_size"])
        charged += body["credits"]["charged_micro"]
    assert max(batch_sizes) > 1, batch_sizes  # concurrent calls were batched
    wait_recorded(r.json()["id"] for r in responses)
    assert api.balance_micro() == before - charged
    assert drift("batcher") == 0


def test_popped_groups_still_execute_within_max_batch_size(user_api, fleet, tmp_path):
    """The worker pops waiting calls as a group (one admission, one settlement), but execution
    follows each version's max_batch_size: rows per run never pass it, and 1 means alone."""
    from modelport.registry.models import ModelVersion

    api = user_api("chunker")
    limits = {"one": 1, "three": 3}
    for name, limit in limits.items():
        vid = ready_model(api, name, sum_model(tmp_path / f"{name}.onnx"))
        ModelVersion.objects.filter(pk=vid).update(max_batch_size=limit, max_queue_delay_ms=30)
    worker = fleet.start_worker("serve", serve=True)
    fleet.wait_for_serving(worker)
    key = api.http.headers["Authorization"]
    rng = np.random.default_rng(7)
    for name, limit in limits.items():
        assert call(fleet.base_url, key, f"chunker/{name}", {"x": [[1.0, 2.0]]}).status_code == 200
        jobs = [rng.integers(-9, 9, size=(1 + i % 2, 4)).astype(np.float32) for i in range(40)]
        responses, _ = piled_up(worker, lambda x, name=name: call(fleet.base_url, key, f"chunker/{name}",
                                                                  {"x": x.tolist()}), jobs, threads=20)
        rows_per_run = []
        for x, resp in zip(jobs, responses, strict=True):
            assert resp.status_code == 200, resp.text
            np.testing.assert_allclose(resp.json()["output"]["y"], 2 * x.sum(axis=1), rtol=1e-6)
            rows_per_run.append(resp.json()["metrics"]["batch_size"])
        assert max(rows_per_run) <= limit, (name, rows_per_run)
    assert drift("chunker") == 0


def test_queue_full_429_and_deadline_503_charge_nothing(user_api, fleet, tmp_path):
    from modelport.gateway.models import Prediction
    from modelport.registry.models import ModelVersion

    api = user_api("queuer")
    vid = ready_model(api, "mlp", mlp_onnx(tmp_path / "mlp.onnx"))
    ModelVersion.objects.filter(pk=vid).update(max_queue=2)
    metrics_key = staff_key()
    worker = fleet.start_worker("serve", serve=True)
    fleet.wait_for_serving(worker)
    key = api.http.headers["Authorization"]
    x = {"x": [[0.0] * 784]}
    assert call(fleet.base_url, key, "queuer/mlp", x).status_code == 200  # loads it: calls now go to its list
    time.sleep(1.0)  # a heartbeat lists the version as loaded
    before = api.balance_micro()
    worker.pause()
    try:
        # Deadline: nobody pops the call within 400 ms -> 503, nothing charged.
        start = time.monotonic()
        resp = call(fleet.base_url, key, "queuer/mlp", x, **{"Modelport-Deadline-Ms": "400"})
        assert resp.status_code == 503, resp.text
        assert time.monotonic() - start < 5
        assert "deadline" in resp.json()["detail"]
        assert api.balance_micro() == before
        # Fill the version's list to max_queue=2. (The paused worker may already hold one frame it
        # popped in a BLPOP before it stopped; so count what the list holds, not what was sent.)
        queue = f"{fleet.prefix}:q:v{vid}"
        pending = []
        for _ in range(4):
            if fleet.redis.llen(queue) >= 2:
                break
            resp = httpx.post(f"{fleet.base_url}/api/v1/models/queuer/mlp/predictions", json={"input": x},
                              headers={"Authorization": key}, timeout=30)
            assert resp.status_code == 201
            pending.append(resp.json()["id"])
        assert fleet.redis.llen(queue) == 2
        # ... and the next calls are refused before anything is held: the second one at the
        # latest by the web's Redis script (the first refreshes the cached resolution if it
        # is older than the cache's 2 s).
        held = api.balance_micro()
        count = Prediction.objects.filter(user__username="queuer").count()
        admissions = call_admissions(fleet.base_url, metrics_key)
        for _ in range(2):
            resp = call(fleet.base_url, key, "queuer/mlp", x)
            assert resp.status_code == 429, resp.text
            assert resp.headers["Retry-After"] == "1"
        assert call_admissions(fleet.base_url, metrics_key).get("cache", 0) >= admissions.get("cache", 0) + 1
        assert api.balance_micro() == held
        assert Prediction.objects.filter(user__username="queuer").count() == count
    finally:
        worker.resume()
    for pending_id in pending:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = api.get(f"/api/v1/predictions/{pending_id}").json()["status"]
            if status == "succeeded":
                break
            time.sleep(0.2)
        assert status == "succeeded"
    statuses = dict(Prediction.objects.filter(user__username="queuer").values_list("id", "status"))
    assert sorted(statuses.values()) == ["failed"] + ["succeeded"] * (1 + len(pending))
    assert drift("queuer") == 0


def test_eviction_under_a_small_memory_budget(user_api, fleet, tmp_path):
    api = user_api("evictor")
    a = ready_model(api, "a", mlp_onnx(tmp_path / "a.onnx", seed=1))
    b = ready_model(api, "b", mlp_onnx(tmp_path / "b.onnx", seed=2))
    # Each MLP is ~0.8 MB on disk, accounted as 2x + 1 MB: one fits in 3 MB, two do not.
    worker = fleet.start_worker("serve", serve=True, MODELPORT_HOST_MEMORY_BUDGET_MB="3")
    fleet.wait_for_serving(worker)
    key = api.http.headers["Authorization"]
    x = {"x": [[0.1] * 784]}
    first = call(fleet.base_url, key, "evictor/a", x).json()["output"]["y"]
    assert call(fleet.base_url, key, "evictor/b", x).status_code == 200
    time.sleep(1.5)
    beat = fleet.wait_for_serving(worker)
    assert beat["loaded"] == [b]
    assert beat["evictions"] >= 1
    again = call(fleet.base_url, key, "evictor/a", x)
    assert again.status_code == 200 and again.json()["output"]["y"] == first
    time.sleep(1.5)
    assert fleet.wait_for_serving(worker)["loaded"] == [a]


def _wait_hosted(fleet, workers, vid, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        beats = {b["pid"]: b for b in fleet.serving_workers()}
        if all(vid in beats.get(w.popen.pid, {}).get("loaded", []) for w in workers):
            return beats
        time.sleep(0.3)
    raise AssertionError(f"version {vid} not placed on every worker: {fleet.serving_workers()}")


def test_placement_on_two_workers_and_sigkill_mid_load(user_api, fleet, tmp_path):
    from modelport.gateway.models import Prediction
    from modelport.gateway.services import predictions_reap
    from modelport.registry.models import ModelVersion

    api = user_api("placer")
    vid = ready_model(api, "mlp", mlp_onnx(tmp_path / "mlp.onnx"))
    ModelVersion.objects.filter(pk=vid).update(min_replicas=2, max_queue_delay_ms=0)
    w1 = fleet.start_worker("serve1", serve=True)
    w2 = fleet.start_worker("serve2", serve=True)
    _wait_hosted(fleet, [w1, w2], vid)  # placed before any call
    key = api.http.headers["Authorization"]
    x = {"x": [[0.2] * 784]}
    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda _: call(fleet.base_url, key, "placer/mlp", x), range(64)))
    assert all(r.status_code == 200 for r in responses)
    served = {r.json()["metrics"]["batch_size"] >= 1 for r in responses}
    assert served == {True}
    beats = {b["pid"]: b for b in fleet.serving_workers()}
    assert beats[w1.popen.pid]["served"] > 0 and beats[w2.popen.pid]["served"] > 0  # both took load

    wait_recorded(r.json()["id"] for r in responses)
    before = api.balance_micro()
    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(call, fleet.base_url, key, "placer/mlp", x, **{"Modelport-Deadline-Ms": "3000"})
                   for _ in range(120)]
        time.sleep(0.3)
        w1.kill()
        results = [f.result() for f in futures]
    codes = [r.status_code for r in results]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(200) > 0
    time.sleep(6)  # past every deadline plus the reaper's grace
    with override_settings(MODELPORT_REDIS_PREFIX=fleet.prefix):  # this data plane's journals
        predictions_reap(grace_s=0)
    rows = Prediction.objects.filter(user__username="placer", created_at__gte=min(
        Prediction.objects.filter(user__username="placer").order_by("-created_at")
        .values_list("created_at", flat=True)[:120]))
    assert rows.count() == 120
    assert not rows.exclude(status__in=["succeeded", "failed"]).exists()  # nothing stuck
    succeeded = rows.filter(status="succeeded")
    assert succeeded.count() == codes.count(200)
    assert all(p.charged == 0 for p in rows.filter(status="failed"))
    assert api.balance_micro() == before - sum(p.charged for p in succeeded)
    assert drift("placer") == 0


def _settle_without_reply(fleet, vid: int, timeout: float = 10.0) -> str:
    """Play a worker killed between settling a call and replying: pop the call's frame from the
    cold queue (no worker runs on this data plane), settle it, never reply."""
    from datetime import UTC, datetime

    from modelport.gateway import fastsql
    from modelport.gateway.services import prediction_succeed

    from workers import wire

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        item = fleet.redis.blpop([f"{fleet.prefix}:q:cold", f"{fleet.prefix}:q:v{vid}"], timeout=1)
        if item is not None:
            header, _ = wire.unpack(item[1])
            if "admit" in header:  # a deferred admission: the worker admits before running
                assert fastsql.admit_many([header["admit"]]) == {header["id"]}
            output = {"y": [[0.5] * 10]} if header["protocol"] == "native" else None
            done = prediction_succeed(prediction_id=header["id"], output=output, compute_us=2000, queue_ms=1.0,
                                      batch_size=1, hardware="cpu", worker="killed", started_at=datetime.now(UTC))
            assert done is not None and done.charged > 0
            return header["id"]
    raise AssertionError("no call was queued")


def test_settled_call_whose_reply_was_lost(user_api, fleet, tmp_path):
    """Native: the result is in the database, so the caller gets it (200, charged once).
    V2: outputs are not stored, so the charge is refunded and the caller gets 503."""
    from modelport.gateway.models import Prediction

    api = user_api("lostreply")
    vid = ready_model(api, "mlp", mlp_onnx(tmp_path / "mlp.onnx"))
    key = api.http.headers["Authorization"]
    before = api.balance_micro()
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(call, fleet.base_url, key, "lostreply/mlp", {"x": [[0.1] * 784]},
                             **{"Modelport-Deadline-Ms": "1500"})
        pid = _settle_without_reply(fleet, vid)
        resp = future.result()
    assert resp.status_code == 200, resp.text
    assert resp.json()["id"] == pid and resp.json()["output"] == {"y": [[0.5] * 10]}
    charged = Prediction.objects.get(pk=pid).charged
    assert resp.json()["credits"]["charged_micro"] == charged > 0
    assert api.balance_micro() == before - charged

    before = api.balance_micro()
    # V2 carries its deadline in the request's `timeout` parameter (microseconds).
    body = {"inputs": [{"name": "x", "shape": [1, 784], "datatype": "FP32", "data": [0.1] * 784}],
            "parameters": {"timeout": 1_500_000}}
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(httpx.post, f"{fleet.base_url}/v2/models/lostreply/mlp/infer", json=body,
                             headers={"Authorization": key}, timeout=60)
        pid = _settle_without_reply(fleet, vid)
        resp = future.result()
    prediction = Prediction.objects.get(pk=pid)
    assert resp.status_code == 503, resp.text
    assert "nothing was charged" in resp.text
    assert prediction.status == "failed" and prediction.error["code"] == "undelivered" and prediction.charged == 0
    assert api.balance_micro() == before
    assert drift("lostreply") == 0


def test_deferred_call_that_no_worker_admitted_is_recorded_failed_and_can_never_run(user_api, fleet, tmp_path):
    """A waiting call is admitted by the worker that pops it. If its deadline passes first (no
    worker on this data plane), the web records it as failed with nothing held; a worker that
    pops the frame afterwards cannot admit it any more, so it can never be charged."""
    from modelport.billing.models import LedgerEntry
    from modelport.gateway import fastsql
    from modelport.gateway.models import Prediction

    from workers import wire

    api = user_api("abandoned")
    vid = ready_model(api, "mlp", mlp_onnx(tmp_path / "mlp.onnx"))
    before = api.balance_micro()
    resp = call(fleet.base_url, api.http.headers["Authorization"], "abandoned/mlp", {"x": [[0.1] * 784]},
                **{"Modelport-Deadline-Ms": "500"})
    assert resp.status_code == 503, resp.text
    assert resp.json()["code"] == "deadline"
    prediction = Prediction.objects.get(pk=resp.json()["prediction_id"])
    assert prediction.status == "failed" and prediction.error["code"] == "deadline"
    assert prediction.hold_amount == 0 and prediction.charged == 0
    assert not LedgerEntry.objects.filter(prediction=prediction).exists()
    item = fleet.redis.lpop(f"{fleet.prefix}:q:cold") or fleet.redis.lpop(f"{fleet.prefix}:q:v{vid}")
    header, _ = wire.unpack(item)
    assert header["id"] == prediction.pk
    assert fastsql.admit_many([header["admit"]]) == set()  # the late worker cannot admit it
    assert Prediction.objects.get(pk=prediction.pk).status == "failed"
    assert api.balance_micro() == before
    assert drift("abandoned") == 0


def test_group_admission_takes_what_the_balance_covers(user_api, live, tmp_path):
    """Admission of a popped group: one statement when the account covers the whole group, and
    call by call when it does not (what fits is admitted, the rest refused with nothing held)."""
    from django.utils import timezone
    from modelport.gateway import fastsql, services
    from modelport.gateway.models import Prediction
    from modelport.registry.models import ModelVersion

    api = user_api("grouped", credits=3)  # each row below holds 1 credit
    vid = ready_model(api, "mlp", mlp_onnx(tmp_path / "mlp.onnx"))
    version = ModelVersion.objects.get(pk=vid)
    account_id = services._account_id(version.model.owner_id)

    def row() -> dict:
        now = timezone.now()
        return fastsql.admission_row(Prediction(
            user_id=version.model.owner_id, account_id=account_id, version=version, protocol="native",
            quote={"hardware": "cpu", "base": 0, "per_second": 0, "royalty": 0}, hold_amount=1_000_000,
            deadline_at=now, created_at=now))

    rows = [row() for _ in range(2)]
    assert fastsql.admit_many(rows) == {r["id"] for r in rows}
    assert api.balance_micro() == 1_000_000
    rows = [row() for _ in range(2)]
    assert fastsql.admit_many(rows) == set()  # 2 credits asked, 1 left: the group as a whole is refused
    assert fastsql.admit_many(rows[:1]) == {rows[0]["id"]}
    assert api.balance_micro() == 0
    assert not Prediction.objects.filter(pk=rows[1]["id"]).exists()
    for pid in [r["id"] for r in rows[:1]] + list(Prediction.objects.filter(
            user__username="grouped", status="starting").values_list("pk", flat=True)):
        services.prediction_fail(prediction_id=pid, code="test", message="released")
    assert api.balance_micro() == 3_000_000
    assert drift("grouped") == 0


def _served(fleet, proc) -> int:
    """The worker's served count once its heartbeat has caught up (two equal readings)."""
    last = None
    for _ in range(40):
        beat = next((b for b in fleet.serving_workers() if b["pid"] == proc.popen.pid), None)
        if beat is not None and beat["served"] == last:
            return last
        last = beat["served"] if beat else None
        time.sleep(0.6)
    raise TimeoutError("no steady heartbeat")


def test_postpaid_calls_are_admitted_by_their_settlement_and_a_drained_account_is_402_before_it_runs(
        user_api, fleet, tmp_path):
    """Once the worker has seen an account with ample balance, its next calls run before their
    admission and one statement records each (a hold of its price and a settlement of 0 in the
    ledger, charged once). An adjustment that drains the account makes the worker forget what it
    saw: the next call is refused with 402 before it runs."""
    from django.contrib.auth import get_user_model
    from modelport.billing.models import LedgerEntry
    from modelport.billing.services import credits_grant
    from modelport.gateway.models import Prediction

    api = user_api("postpaid")
    ready_model(api, "mlp", mlp_onnx(tmp_path / "mlp.onnx"))
    worker = fleet.start_worker("serve", serve=True)
    fleet.wait_for_serving(worker)
    key = api.http.headers["Authorization"]
    x = {"x": [[0.5] * 784]}
    before = api.balance_micro()
    ids = []
    for _ in range(4):
        resp = call(fleet.base_url, key, "postpaid/mlp", x)
        assert resp.status_code == 200, resp.text
        ids.append(resp.json()["id"])
    # Read straight after its answer (a postpaid call is answered before its row is written):
    # found, as answered. The worker records in order, so the earlier rows are there too.
    stored = httpx.get(f"{fleet.base_url}/api/v1/predictions/{ids[-1]}", headers={"Authorization": key}).json()
    answered = resp.json()
    assert [stored[k] for k in ("id", "status", "output", "credits")] == [
        answered[k] for k in ("id", "status", "output", "credits")]
    rows = {p.id: p for p in Prediction.objects.filter(pk__in=ids)}
    assert all(rows[i].status == "succeeded" and rows[i].charged > 0 for i in ids)
    assert rows[ids[0]].hold_amount > rows[ids[0]].charged  # the first was admitted (held) before it ran
    later = [rows[i] for i in ids[1:] if rows[i].hold_amount == rows[i].charged]
    assert later, "no call ran postpaid"
    journals = [json.loads(fleet.redis.get(k)) for k in fleet.redis.scan_iter(f"{fleet.prefix}:journal:*")]
    assert [[r["id"] for r in rows] for rows in journals] == [[later[-1].id]]  # written with its answer
    for p in later:
        entries = sorted(LedgerEntry.objects.filter(prediction_id=p.id).values_list("kind", "amount"))
        assert entries == [("hold", -p.charged), ("settle", 0)]
    assert api.balance_micro() == before - sum(p.charged for p in rows.values())
    assert drift("postpaid") == 0

    # Drain the account with an adjustment: the worker must not run the next call.
    served = _served(fleet, worker)
    user = get_user_model().objects.get(username="postpaid")
    assert credits_grant(user=user, credits_micro=-api.balance_micro(), kind=LedgerEntry.Kind.ADJUSTMENT,
                         memo="drained by the test")
    resp = call(fleet.base_url, key, "postpaid/mlp", x)
    assert resp.status_code == 402, resp.text
    assert api.balance_micro() == 0
    assert _served(fleet, worker) == served
    assert Prediction.objects.filter(user=user).count() == len(ids)
    assert drift("postpaid") == 0


def served_row(version_id: int, *, charged: int = 1_000_000) -> dict:
    """A postpaid call as its worker records it after answering it (RECORD_MANY's row), for
    version `version_id`'s owner: succeeded, charged `charged` µc."""
    from django.utils import timezone
    from modelport.gateway import fastsql, services
    from modelport.gateway.models import Prediction
    from modelport.registry.models import ModelVersion

    version = ModelVersion.objects.select_related("model").get(pk=version_id)
    now = timezone.now()
    base = fastsql.admission_row(Prediction(
        user_id=version.model.owner_id, account_id=services._account_id(version.model.owner_id), version=version,
        protocol="native", quote={"hardware": "cpu", "base": 0, "per_second": 0, "royalty": 0},
        hold_amount=2 * charged, deadline_at=now, created_at=now))
    return {**base, "status": "succeeded", "output": {"y": [[1.0, None]]}, "charged": charged,
            "hold_amount": charged, "metrics": {"batch_size": 1}, "started_at": now, "completed_at": now}


def test_record_many_never_takes_a_balance_below_zero(user_api, live, tmp_path):
    """The postpaid statement (RECORD_MANY) itself: per account it records a group only when
    the balance covers the group's charges; a row whose id exists is never recorded again."""
    from modelport.gateway import fastsql
    from modelport.gateway.models import Prediction

    api = user_api("recorder", credits=3)
    vid = ready_model(api, "mlp", mlp_onnx(tmp_path / "mlp.onnx"))
    balances: dict[int, int] = {}
    first = [served_row(vid) for _ in range(2)]
    account_id = first[0]["account_id"]
    assert fastsql.record_many(first, balances=balances) == {r["id"]: 1_000_000 for r in first}
    assert balances == {account_id: 1_000_000}
    assert fastsql.record_many(first, balances=balances) == {}  # already recorded: not again
    assert fastsql.record_many([served_row(vid), served_row(vid)], balances=balances) == {}  # 2 asked, 1 left
    assert api.balance_micro() == 1_000_000
    stored = Prediction.objects.get(pk=first[0]["id"])
    assert stored.status == "succeeded" and stored.output == {"y": [[1.0, None]]}
    assert Prediction.objects.filter(user__username="recorder").count() == 2
    assert drift("recorder") == 0


def test_answered_calls_a_dead_worker_never_recorded_are_recorded_from_its_journal(user_api, live, tmp_path):
    """A worker answers postpaid calls before their rows are written, with the rows in its
    journal. Played here: a worker killed in between. The reaper records them, each once,
    charged as answered where the balance covers it and uncharged where the account ran dry
    meanwhile (never below zero); replaying again changes nothing."""
    from modelport.gateway import dispatch, fastsql
    from modelport.gateway.models import Prediction
    from modelport.gateway.services import predictions_reap

    api = user_api("journaled", credits=3)
    vid = ready_model(api, "mlp", mlp_onnx(tmp_path / "mlp.onnx"))
    for key in live.redis.scan_iter(dispatch.journal_key("*")):  # earlier tests' (their rows are gone)
        live.redis.delete(key)
    first, second = [served_row(vid) for _ in range(2)], [served_row(vid) for _ in range(2)]
    live.redis.set(dispatch.journal_key("dead-a:1"), fastsql.rows_json(first), ex=60)
    assert predictions_reap(grace_s=0) == 2
    assert {p.id: (p.status, p.charged) for p in Prediction.objects.filter(user__username="journaled")} == {
        r["id"]: ("succeeded", 1_000_000) for r in first}
    assert api.balance_micro() == 1_000_000

    live.redis.set(dispatch.journal_key("dead-b:2"), fastsql.rows_json(second), ex=60)  # 2M due, 1M left
    assert predictions_reap(grace_s=0) == 2
    charged = sorted(Prediction.objects.filter(pk__in=[r["id"] for r in second]).values_list("status", "charged"))
    assert charged == [("succeeded", 0), ("succeeded", 1_000_000)]
    assert api.balance_micro() == 0
    assert predictions_reap(grace_s=0) == 0  # both journals again: all recorded already
    assert Prediction.objects.filter(user__username="journaled").count() == 4
    assert drift("journaled") == 0


def test_answered_calls_whose_recording_failed_go_again_with_the_next_group(user_api, live, tmp_path, monkeypatch):
    """The worker's recording after the reply (ServingLoop._record): when the database fails,
    the answered calls stay with the worker and are recorded with its next group, once each."""
    from django.db import OperationalError
    from modelport.gateway import services
    from modelport.gateway.models import Prediction
    from modelport.gateway.serving import ServingLoop

    api = user_api("retrier")
    vid = ready_model(api, "mlp", mlp_onnx(tmp_path / "mlp.onnx"))
    loop = ServingLoop(worker_id="retrier:1")
    first, second = served_row(vid), served_row(vid)
    before = api.balance_micro()
    working = services.predictions_record_served

    def database_down(**kwargs):
        raise OperationalError("the database went away")

    monkeypatch.setattr(services, "predictions_record_served", database_down)
    loop._record([first])
    assert [r["id"] for r in loop.unrecorded] == [first["id"]]
    assert not Prediction.objects.filter(pk=first["id"]).exists()
    monkeypatch.setattr(services, "predictions_record_served", working)
    loop._record([*loop.unrecorded, second])
    assert loop.unrecorded == []
    assert dict(Prediction.objects.filter(user__username="retrier").values_list("pk", "charged")) == {
        first["id"]: 1_000_000, second["id"]: 1_000_000}
    assert api.balance_micro() == before - 2_000_000
    assert drift("retrier") == 0


def test_a_prediction_being_recorded_is_waited_for_and_an_unknown_one_is_404_at_once(user_api, fleet, tmp_path):
    """GET of a postpaid call's prediction straight after its answer finds it: while the call is
    in a worker's journal without a row, the read waits for the row; an id in no journal is 404
    at once. Played with a worker (registered, with a journal) that writes the row late."""
    import threading

    from modelport.gateway import fastsql

    api = user_api("reader")
    vid = ready_model(api, "mlp", mlp_onnx(tmp_path / "mlp.onnx"))
    row = served_row(vid)
    fleet.redis.hset(f"{fleet.prefix}:workers", "late:1", json.dumps({"id": "late:1", "ts": time.time()}))
    fleet.redis.set(f"{fleet.prefix}:journal:late:1", fastsql.rows_json([served_row(vid), row]), ex=60)

    def record_late() -> None:
        from django.db import connection

        fastsql.record_many([row], balances={})
        connection.close()

    auth = {"Authorization": api.http.headers["Authorization"]}
    writer = threading.Timer(0.4, record_late)
    started = time.monotonic()
    writer.start()
    resp = httpx.get(f"{fleet.base_url}/api/v1/predictions/{row['id']}", headers=auth, timeout=10)
    waited = time.monotonic() - started
    writer.join()
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "succeeded" and resp.json()["output"] == {"y": [[1.0, None]]}
    assert waited >= 0.35

    started = time.monotonic()
    other = served_row(vid)["id"]
    assert httpx.get(f"{fleet.base_url}/api/v1/predictions/{other}", headers=auth, timeout=10).status_code == 404
    assert time.monotonic() - started < 0.35


def test_non_finite_outputs_are_null_and_the_call_is_settled(user_api, fleet, tmp_path):
    """JSON (and PostgreSQL's jsonb) has no NaN: a model that outputs NaN or infinity answers
    null in those places, and the call is recorded and charged like any other."""
    from modelport.gateway.models import Prediction

    path = tmp_path / "sqrt.onnx"
    graph = helper.make_graph(
        [helper.make_node("Sqrt", ["x"], ["s"]), helper.make_node("Reciprocal", ["s"], ["y"])],
        "sqrt", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    api = user_api("nanny")
    ready_model(api, "sqrt", path)
    worker = fleet.start_worker("serve", serve=True)
    fleet.wait_for_serving(worker)
    key = api.http.headers["Authorization"]
    before = api.balance_micro()
    for _ in range(3):  # the later calls also take the postpaid path
        resp = call(fleet.base_url, key, "nanny/sqrt", {"x": [[4.0, -1.0, 0.0]]})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["output"] == {"y": [[0.5, None, None]]}
        wait_recorded([body["id"]])
        assert Prediction.objects.get(pk=body["id"]).output == {"y": [[0.5, None, None]]}
    assert api.balance_micro() < before
    assert drift("nanny") == 0


def test_saved_batching_settings_apply_without_restarting_the_worker(user_api, fleet, tmp_path):
    """A version's batching settings saved through the platform (admin form, ORM save) reach a
    running worker: it forgets the settings it cached when the resolution generation changes."""
    from modelport.registry.models import ModelVersion

    _, worker, key = summer_served(user_api, fleet, tmp_path, "retuner", max_batch_size=1, max_queue_delay_ms=30)

    def burst() -> list[int]:
        responses, _ = piled_up(worker, lambda i: call(fleet.base_url, key, "retuner/summer", {"x": [[float(i), 1.0]]}),
                                list(range(12)), threads=12)
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        return [r.json()["metrics"]["batch_size"] for r in responses]

    assert call(fleet.base_url, key, "retuner/summer", {"x": [[1.0, 2.0]]}).status_code == 200  # cached: 1
    assert max(burst()) == 1
    version = ModelVersion.objects.get(model__owner__username="retuner")
    version.max_batch_size = 16
    version.save(update_fields=["max_batch_size"])
    assert max(burst()) > 1
    assert drift("retuner") == 0


def test_queue_delay_counts_from_enqueue_so_calls_that_already_waited_run_at_once(user_api, fleet, tmp_path):
    """max_queue_delay_ms bounds how long a call is held for others from when it was enqueued
    (Triton's rule), not from when a worker popped it: calls that already waited that long in
    the list (a busy or paused worker) run as soon as they are popped."""
    _, worker, key = summer_served(user_api, fleet, tmp_path, "patient", max_batch_size=16, max_queue_delay_ms=3000)
    assert call(fleet.base_url, key, "patient/summer", {"x": [[1.0, 2.0]]}).status_code == 200  # loaded
    time.sleep(1.0)  # a heartbeat lists the version as loaded: calls go to its own list
    # They wait 3.5 s in the list, longer than the delay: they have waited enough.
    responses, finished = piled_up(worker, lambda i: call(fleet.base_url, key, "patient/summer",
                                                          {"x": [[float(i), 1.0]]}), list(range(3)),
                                   threads=3, hold_s=3.5)
    assert [r.status_code for r in responses] == [200, 200, 200], [r.text for r in responses]
    assert max(r.json()["metrics"]["batch_size"] for r in responses) > 1  # still served together
    assert finished < 1.5, finished  # not held for another 3 s after the pop
