"""Issue 16 item 16, the validators' side: inputs the schema allows get a 400 naming the field,
never a 500; a file field sent as text is refused as such."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from modelport.registry.models import Model, ModelVersion

from tests.conftest import make_user


@pytest.fixture
def api(db: Any) -> Client:
    user, key = make_user("validators")
    Model.objects.create(owner=user, name="net")
    return Client(headers={"Authorization": f"Bearer {key}"}, raise_request_exception=False)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("since=9999-12-31T23:59:59-23:59", "since"),  # PostgreSQL refuses offsets past ±15:59: was a 500
        ("until=0001-01-01T00:00:00%2B23:59", "until"),
        ("since=2026-01-01T00:00:00", "since"),  # no timezone
        ("until=2026-02-30", "until"),  # no such day
    ],
)
def test_usage_time_bounds_are_400_naming_the_field(api: Client, query: str, field: str) -> None:
    resp = api.get(f"/api/v1/account/usage?{query}")
    assert resp.status_code == 400, resp.content
    assert resp["Content-Type"].startswith("application/problem+json")
    assert list(resp.json()["errors"]) == [field]


def test_usage_time_bound_with_a_large_offset_is_read_in_utc(api: Client) -> None:
    resp = api.get("/api/v1/account/usage?since=2026-01-01T00:00:00%2B23:00&until=2026-01-02")
    assert resp.status_code == 200, resp.content
    assert resp.json()["results"] == []


@pytest.mark.parametrize("field", ["artifact", "source"])
def test_a_file_field_sent_as_text_is_refused_as_such(api: Client, field: str) -> None:
    data = {"format": "state_dict", "entrypoint": "Net", "inputs": '[{"name": "x", "dtype": "float32", "shape": [4]}]',
            "artifact": "https://example.invalid/w.safetensors", "source": "class Net: pass"}
    if field == "source":
        from django.core.files.uploadedfile import SimpleUploadedFile

        data["artifact"] = SimpleUploadedFile("w.safetensors", b"{}")
    resp = api.post("/api/v1/models/validators/net/versions", data)
    assert resp.status_code == 400, resp.content
    assert resp.json()["errors"] == {field: ["expected a file"]}
    assert resp.json()["detail"] == f"{field} must be sent as a file (a multipart file part), not as a text field"
    assert not ModelVersion.objects.exists()
