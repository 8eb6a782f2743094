"""Issue 6: exact credits under concurrency and faults; royalties; rounding."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import wait_recorded
from workers.demo import mlp_onnx

pytestmark = pytest.mark.integration
MICRO = 1_000_000


def _ready(api, name, tmp_path, *, visibility="private"):
    assert api.post("/api/v1/models", json={"name": name, "visibility": visibility}).status_code == 201
    assert api.upload(api.username, name, fmt="onnx", artifact=mlp_onnx(tmp_path / f"{name}.onnx",
                                                                            sizes=(16, 8, 4))).status_code == 202
    assert api.wait_version(api.username, name, 1)["status"] == "ready"


def _account(username):
    from modelport.billing.models import CreditAccount

    return CreditAccount.objects.get(user__username=username)


def _drift(username):
    from modelport.billing.services import ledger_drift

    return ledger_drift(account=_account(username))


def test_64_concurrent_calls_on_a_short_balance(user_api, live, tmp_path):
    from modelport.billing.models import LedgerEntry
    from modelport.gateway.models import Prediction

    owner = user_api("shortowner")
    _ready(owner, "tiny", tmp_path, visibility="public")
    caller = user_api("short", credits=4)  # each call holds 0.1 + 1 s x 1 credit/s = 1.1 credits
    key = caller.http.headers["Authorization"]
    body = {"input": {"x": [[0.5] * 16]}}
    # The model loads on its first call; a cold start on a busy machine can outlast the 1 s
    # deadline below, and this test is about metering, not cold starts: the owner warms it.
    assert owner.post("/api/v1/models/shortowner/tiny/predictions", json=body,
                      headers={"Prefer": "wait"}).status_code == 200

    def one(_):
        return httpx.post(f"{live.base_url}/api/v1/models/shortowner/tiny/predictions", json=body, timeout=60,
                          headers={"Authorization": key, "Prefer": "wait", "Modelport-Deadline-Ms": "1000"})

    with ThreadPoolExecutor(max_workers=64) as pool:
        responses = list(pool.map(one, range(64)))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 402}, [(r.status_code, r.text) for r in responses if r.status_code not in (200, 402)]
    assert codes.count(402) > 0 and codes.count(200) > 0
    for r in responses:
        if r.status_code == 402:
            problem = r.json()
            assert problem["required"] == 1.1 and problem["balance"] >= 0  # balance read just after refusal
    predictions = Prediction.objects.filter(user__username="short")
    assert predictions.count() == codes.count(200)  # a refused call leaves nothing behind
    assert not predictions.exclude(status="succeeded").exists()
    for p in predictions:
        kinds = sorted(p.ledger_entries.values_list("kind", flat=True))
        assert kinds == ["hold", "settle"], kinds  # charged exactly once
        assert sum(p.ledger_entries.values_list("amount", flat=True)) == -p.charged
    charged = sum(r.json()["credits"]["charged_micro"] for r in responses if r.status_code == 200)
    account = _account("short")
    assert account.balance == 4 * MICRO - charged >= 0
    assert LedgerEntry.objects.filter(account=account).exclude(prediction__isnull=True).count() == 2 * codes.count(200)
    assert _drift("short") == 0


def test_royalty_paid_to_owner_and_not_on_own_calls(user_api, tmp_path):
    owner = user_api("author")
    _ready(owner, "paid", tmp_path, visibility="public")
    assert owner.patch("/api/v1/models/author/paid", json={"royalty": "0.25"}).json()["royalty"] == 0.25
    caller = user_api("fan")
    x = {"input": {"x": [[1.0] * 16]}}
    owner_before, caller_before = owner.balance_micro(), caller.balance_micro()
    resp = caller.post("/api/v1/models/author/paid/predictions", json=x, headers={"Prefer": "wait"})
    assert resp.status_code == 200
    credits = resp.json()["credits"]
    assert credits["royalty"] == 0.25
    compute_us = round(resp.json()["metrics"]["compute_ms"] * 1000)
    assert credits["charged_micro"] == MICRO // 10 + 250_000 + -(-compute_us * MICRO // MICRO)
    assert caller.balance_micro() == caller_before - credits["charged_micro"]
    assert owner.balance_micro() == owner_before + 250_000
    own = owner.post("/api/v1/models/author/paid/predictions", json=x, headers={"Prefer": "wait"}).json()
    assert own["credits"]["royalty"] == 0.0
    assert owner.balance_micro() == owner_before + 250_000 - own["credits"]["charged_micro"]
    usage = owner.get("/api/v1/account/usage").json()
    assert usage["earnings"] == [{"model": "author/paid", "calls": 1, "royalty": 0.25}]
    assert _drift("author") == 0 and _drift("fan") == 0


def test_usage_json_csv_and_filters(user_api, tmp_path):
    api = user_api("reporter")
    _ready(api, "m1", tmp_path)
    _ready(api, "m2", tmp_path)
    x = {"input": {"x": [[1.0] * 16]}}
    ids = []
    for model in ("m1", "m1", "m2"):
        resp = api.post(f"/api/v1/models/reporter/{model}/predictions", json=x, headers={"Prefer": "wait"})
        assert resp.status_code == 200, resp.text
        ids.append(resp.json()["id"])
    wait_recorded(ids)
    resp = api.get("/api/v1/account/usage")
    assert resp.status_code == 200, resp.text
    usage = resp.json()
    assert len(usage["results"]) == 3
    assert usage["daily"][0]["calls"] == 3
    assert round(usage["daily"][0]["credits"] * MICRO) == sum(round(r["charged"] * MICRO) for r in usage["results"])
    assert len(api.get("/api/v1/account/usage", params={"model": "reporter/m1"}).json()["results"]) == 2
    assert api.get("/api/v1/account/usage", params={"since": "2999-01-01"}).json()["results"] == []
    assert api.get("/api/v1/account/usage", params={"since": "yesterday"}).status_code == 400
    csv_resp = api.get("/api/v1/account/usage", headers={"Accept": "text/csv"})
    assert csv_resp.headers["content-type"].startswith("text/csv")
    lines = csv_resp.text.strip().splitlines()
    assert lines[0].startswith("id,created_at,model") and len(lines) == 4


def test_daily_cap_per_key(user_api, live, tmp_path):
    from modelport.accounts.models import ApiKey
    from modelport.gateway import authcache

    api = user_api("capped")
    _ready(api, "m", tmp_path)
    x = {"input": {"x": [[1.0] * 16]}}
    # Warm the model first (its cold start could outlast the 1 s deadlines below); ~0.1 credit.
    assert api.post("/api/v1/models/capped/m/predictions", json=x, headers={"Prefer": "wait"}).status_code == 200
    ApiKey.objects.filter(user__username="capped").update(daily_cap=3 * MICRO)  # covers 2 holds of 1.1
    authcache.invalidate()  # a queryset update sends no signal: tell the web processes
    headers = {"Prefer": "wait", "Modelport-Deadline-Ms": "1000"}
    codes = [api.post("/api/v1/models/capped/m/predictions", json=x, headers=headers).status_code for _ in range(3)]
    assert codes[:2] == [200, 200]
    # The third hold would pass 3 credits only if the first two were still held; they settled
    # at ~0.1 credit each, so it fits. Fill the cap with a big deadline instead:
    big = {"Prefer": "wait", "Modelport-Deadline-Ms": "5000"}
    resp = api.post("/api/v1/models/capped/m/predictions", json=x, headers=big)
    assert resp.status_code == 402
    assert "daily cap" in resp.json()["detail"]
    assert _drift("capped") == 0


def test_service_level_rounding_10000_calls_sum_exactly(live):
    """10,000 tiny calls settled through the real services: their charges sum exactly to the
    balance change and each equals its price formula (no float anywhere)."""
    from django.utils import timezone
    from modelport.accounts.services import user_create
    from modelport.billing.services import Quote
    from modelport.gateway import services
    from modelport.gateway.models import Prediction
    from modelport.registry.models import Model, ModelVersion

    owner = user_create(username="roundowner")
    model = Model.objects.create(owner=owner, name="m", visibility="public", royalty_per_call=7)
    version = ModelVersion.objects.create(model=model, number=1, format="onnx", status="ready", upload_sha256="0" * 64,
                                          upload_filename="m.onnx", signature={"inputs": [], "outputs": []})
    version.model = model
    caller = user_create(username="rounder")
    before = _account("rounder").balance
    total = 0
    start = time.monotonic()
    for i in range(10_000):
        admission = services.prediction_admit(user=caller, api_key=None, version=version, protocol="native",
                                              deadline_s=0.05)
        compute_us = 1 + (i * 7919) % 997  # sub-millisecond computes: the fractional µc must round up
        p = services.prediction_succeed(prediction_id=admission.prediction.id, output=None, compute_us=compute_us,
                                        queue_ms=0.0, batch_size=1, hardware="cpu", worker="t",
                                        started_at=timezone.now())
        q = Quote(hardware="cpu", base=100_000, per_second=1_000_000, royalty=7)
        assert p.charged == q.price(compute_us)
        total += p.charged
    assert time.monotonic() - start < 600
    assert _account("rounder").balance == before - total
    assert sum(Prediction.objects.filter(user=caller).values_list("charged", flat=True)) == total
    assert _account("roundowner").balance == 50_000 * MICRO + 7 * 10_000
    assert _drift("rounder") == 0 and _drift("roundowner") == 0


def test_fast_statements_commit_asynchronously_without_leaking_the_setting(live):
    """Admission and batch settlement turn off synchronous_commit for their own transaction only:
    the next statement on the same connection (a grant, a refund) commits synchronously again."""
    from datetime import UTC, datetime, timedelta

    from django.db import connection
    from modelport.accounts.services import user_create
    from modelport.billing.services import credits_grant
    from modelport.gateway import fastsql
    from modelport.gateway.models import Prediction
    from modelport.registry.models import Model, ModelVersion

    def synchronous_commit() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            return cursor.fetchone()[0]

    user = user_create(username="asyncer")
    model = Model.objects.create(owner=user, name="m")
    version = ModelVersion.objects.create(model=model, number=1, format="onnx", status="ready", upload_sha256="0" * 64,
                                          upload_filename="m.onnx", signature={"inputs": [], "outputs": []})
    assert synchronous_commit() == "on"
    prediction = Prediction(user=user, account_id=_account("asyncer").pk, version=version, protocol="native",
                            quote={}, hold_amount=500, deadline_at=datetime.now(UTC) + timedelta(seconds=5))
    assert fastsql.admit(prediction=prediction, hold=500) == (True, 0)
    assert synchronous_commit() == "on"
    now = datetime.now(UTC)
    settled = fastsql.settle_many(rows=[{"id": prediction.id, "output": None, "price": 120, "metrics": {},
                                         "started_at": now, "completed_at": now}], hardware="cpu", worker="t")
    assert settled == {prediction.id: 120}
    assert synchronous_commit() == "on"
    assert credits_grant(user=user, credits_micro=5, memo="after")
    assert _drift("asyncer") == 0


def test_fast_statements_are_prepared_with_index_lookups_and_replanned(transactional_db):
    """The group statements are really prepared (Django's prepare_threshold=None would make psycopg
    send them unnamed, parsed and planned on every call), their generic plan finds existing
    predictions by index (a plan made on a small table scanned all of gateway_prediction per
    call), and they are prepared again once the connection is recycled (CONN_MAX_AGE)."""
    import json

    from django.db import close_old_connections, connection
    from django.utils import timezone
    from modelport.accounts.services import user_create
    from modelport.gateway import fastsql, services
    from modelport.gateway.models import Prediction
    from modelport.registry.models import Model, ModelVersion

    user = user_create(username="preparer")
    model = Model.objects.create(owner=user, name="m")
    version = ModelVersion.objects.create(model=model, number=1, format="onnx", status="ready", upload_sha256="0" * 64,
                                          upload_filename="m.onnx", signature={"inputs": [], "outputs": []})

    def row() -> dict:
        now = timezone.now()
        return fastsql.admission_row(Prediction(
            user=user, account_id=services._account_id(user.pk), version=version, protocol="native",
            quote={"hardware": "cpu", "base": 0, "per_second": 0, "royalty": 0}, hold_amount=0,
            deadline_at=now, created_at=now))

    def prepared() -> dict[str, object]:  # ADMIT_MANY's, on this connection: name -> prepare time
        with connection.cursor() as cursor:
            cursor.execute("SELECT name, prepare_time FROM pg_prepared_statements "
                           "WHERE statement LIKE '%%jsonb_to_recordset%%' AND statement LIKE '%%WHERE hold_amount > 0%%'")
            return dict(cursor.fetchall())

    first = row()
    assert fastsql.admit_many([first]) == {first["id"]}
    assert fastsql.admit_many([row()])
    (name, prepared_at), = prepared().items()  # one statement, prepared once, executed twice
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN EXECUTE {name}(%s)", [json.dumps([row(), first])])
        plan = "\n".join(line for (line,) in cursor.fetchall())
    assert "Seq Scan on gateway_prediction" not in plan and "Anti Join" not in plan, plan
    assert "Index Only Scan" in plan or "Index Scan" in plan, plan

    connection.close_at = time.monotonic() - 1  # past CONN_MAX_AGE: recycled, as before a pop or an admission
    close_old_connections()
    assert fastsql.admit_many([row()])
    (_, again_at), = prepared().items()
    assert again_at > prepared_at
