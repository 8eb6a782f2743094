"""The event loop's prediction construction and the journal's JSON (gateway/fastsql.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from django.contrib.auth import get_user_model
from django.utils import timezone
from modelport.accounts.models import ApiKey
from modelport.gateway import fastsql
from modelport.gateway.models import Prediction
from modelport.registry.models import Model, ModelVersion


def related() -> dict[str, object]:
    user = get_user_model()(pk=3, username="owner")
    model = Model(pk=5, owner=user, name="m")
    return {"user": user, "api_key": ApiKey(pk=7, user=user), "version": ModelVersion(pk=11, model=model, number=1)}


def test_new_prediction_is_what_keyword_construction_and_admission_row_give():
    objs = related()
    now = timezone.now()
    values = {"account_id": 13, "protocol": "v2", "quote": {"hardware": "cpu", "base": 100}, "hold_amount": 5000,
              "request_id": "req-1", "deadline_at": now + timedelta(seconds=30), "created_at": now}
    reference = Prediction(**objs, **values)
    expected_row = fastsql.admission_row(reference)
    expected_row["created_at"] = now.isoformat()  # admission_row stamps auto_now_add; the loop passes its now
    prediction, row = fastsql.new_prediction(
        {**values, "user_id": 3, "api_key_id": 7, "version_id": 11}, related=objs)

    fields = [f.attname for f in Prediction._meta.concrete_fields if f.attname != "id"]
    assert {f: getattr(prediction, f) for f in fields} == {f: getattr(reference, f) for f in fields} | {
        "created_at": now}
    assert {k: v for k, v in row.items() if k != "id"} == {k: v for k, v in expected_row.items() if k != "id"}
    assert row["id"] == prediction.id and len(prediction.id) == 32 and prediction.id != reference.id
    # The related objects are cached, not fetched (a query on the event loop would refuse).
    assert prediction.api_key is objs["api_key"] and prediction.user is objs["user"]
    assert prediction.version is objs["version"] and prediction._state.adding
    # Mutable defaults are fresh per instance.
    other, _ = fastsql.new_prediction({**values, "user_id": 3, "api_key_id": 7, "version_id": 11}, related=objs)
    assert other.metrics is not prediction.metrics and other.webhook_events is not prediction.webhook_events
    assert other.id != prediction.id


def test_rows_json_writes_datetimes_as_isoformat_and_reads_back():
    when = datetime(2026, 11, 29, 8, 30, 1, 250000, tzinfo=UTC)
    whole = datetime(2026, 11, 29, 8, 30, 1, tzinfo=UTC)
    rows = [{"id": "a" * 32, "status": Prediction.Status.SUCCEEDED, "started_at": when, "completed_at": whole,
             "output": {"y": [[0.5, None]]}, "metrics": {"queue_ms": 0.125}, "charged": 2**40}]
    back = json.loads(fastsql.rows_json(rows))
    assert back == [{**rows[0], "status": "succeeded", "started_at": when.isoformat(),
                     "completed_at": whole.isoformat()}]
