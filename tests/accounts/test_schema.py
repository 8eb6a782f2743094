"""The OpenAPI schema (/api/schema/) says what the API accepts: multipart file fields are binary
(Swagger UI's file picker), the request examples are real bodies, the call headers are documented,
the Open Inference Protocol endpoints are in it, and query values the schema allows are accepted."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from django.urls import URLPattern
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from modelport.accounts.services import api_key_issue, user_create
from modelport.config import urls
from modelport.registry.models import Model

pytestmark = pytest.mark.django_db

NATIVE_CREATE = "/api/v1/models/{owner}/{name}/predictions"


@pytest.fixture
def document(client: Any) -> dict[str, Any]:
    resp = client.get("/api/schema/?format=json")
    assert resp.status_code == 200
    return resp.json()


def _django_to_openapi(route: str) -> str:
    return "/" + route.replace("<str:", "{").replace("<int:", "{").replace(">", "}")


def test_upload_file_fields_are_binary_in_a_multipart_body(document: dict[str, Any]) -> None:
    body = document["paths"]["/api/v1/models/{owner}/{name}/versions"]["post"]["requestBody"]
    assert list(body["content"]) == ["multipart/form-data"]
    ref = body["content"]["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]
    props = document["components"]["schemas"][ref]["properties"]
    assert props["artifact"]["type"] == "string" and props["artifact"]["format"] == "binary"
    assert props["source"]["type"] == "string" and props["source"]["format"] == "binary"
    assert "artifact" in document["components"]["schemas"][ref]["required"]


def test_every_v2_route_is_in_the_schema(document: dict[str, Any]) -> None:
    routes = {_django_to_openapi(str(p.pattern)) for p in urls.v2_urls if isinstance(p, URLPattern)}
    assert len(routes) == 9
    v2 = {path for path in document["paths"] if path == "/v2" or path.startswith("/v2/")}
    assert v2 == routes
    infer = document["paths"]["/v2/models/{owner}/{name}/infer"]["post"]
    assert infer["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/V2InferenceRequest"
    }
    ok = infer["responses"]["200"]["content"]
    assert ok["application/json"]["schema"] == {"$ref": "#/components/schemas/V2InferenceResponse"}
    assert infer["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/V2Error"
    }
    assert document["paths"]["/v2/health/live"]["get"]["security"] == []  # no key needed
    # every $ref the V2 operations use resolves
    text = str({p: document["paths"][p] for p in v2}) + str(document["components"]["schemas"])
    for name in {part.split("'")[0] for part in text.split("#/components/schemas/")[1:]}:
        assert name in document["components"]["schemas"], name


def test_call_headers_are_documented(document: dict[str, Any]) -> None:
    for path in (NATIVE_CREATE, "/api/v1/models/{owner}/{name}/versions/{number}/predictions"):
        params = {p["name"]: p for p in document["paths"][path]["post"]["parameters"] if p["in"] == "header"}
        assert set(params) == {"Prefer", "Idempotency-Key", "Modelport-Deadline-Ms", "Modelport-Max-Price"}
        assert "wait=N" in params["Prefer"]["description"]
        assert "412" in params["Modelport-Max-Price"]["description"]
        assert "milliseconds" in params["Modelport-Deadline-Ms"]["description"]
        assert params["Modelport-Deadline-Ms"]["schema"]["type"] == "number"


def test_query_and_body_types_match_the_validators(document: dict[str, Any]) -> None:
    usage = {p["name"]: p["schema"] for p in document["paths"]["/api/v1/account/usage"]["get"]["parameters"]}
    formats = {"date", "date-time"}
    assert {s["format"] for s in usage["since"]["anyOf"]} == formats
    assert {s["format"] for s in usage["until"]["anyOf"]} == formats
    listing = {p["name"]: p["schema"] for p in document["paths"]["/api/v1/predictions"]["get"]["parameters"]}
    assert listing["cursor"] == {"type": "string", "format": "date-time"}
    patch = document["paths"]["/api/v1/models/{owner}/{name}"]["patch"]["requestBody"]["content"]
    ref = patch["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    royalty = document["components"]["schemas"][ref]["properties"]["royalty"]
    assert royalty["type"] == "number" and royalty["minimum"] == 0


def test_prediction_request_examples_fit_their_schema(document: dict[str, Any]) -> None:
    content = document["paths"][NATIVE_CREATE]["post"]["requestBody"]["content"]["application/json"]
    assert content["examples"]["one_input"]["value"] == {"input": {"x": [[0.25, -1.0, 3.5, 0.0]]}}
    v2 = document["paths"]["/v2/models/{owner}/{name}/infer"]["post"]["requestBody"]["content"]["application/json"]
    assert v2["example"]["inputs"][0]["shape"] == [1, 4]
    assert len(v2["example"]["inputs"][0]["data"]) == 4


def test_query_values_the_schema_allows_are_accepted(document: dict[str, Any], client: Any) -> None:
    """Schema-conforming `since`, `until` and `cursor` values (drawn by schemathesis from the
    schema itself) are all accepted: the schema no longer allows what the validators refuse."""
    user = user_create(username="schemer")
    key = api_key_issue(user=user).secret
    Model.objects.create(owner=user, name="m")
    schema = schemathesis.openapi.from_dict(document)
    ops = {op.path: op for op in (r.ok() for r in schema.get_all_operations()) if op.method.upper() in ("GET", "PATCH")}
    usage = ops["/api/v1/account/usage"].as_strategy()
    listing = ops["/api/v1/predictions"].as_strategy()
    seen: list[str] = []

    @given(case=st.one_of(usage, listing))
    @settings(max_examples=60, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        query = {k: v for k, v in (case.query or {}).items() if k in ("since", "until", "cursor")}
        if not query:
            return
        resp = client.get(case.operation.path, query, HTTP_AUTHORIZATION=f"Bearer {key}")
        seen.extend(query.values())
        assert resp.status_code == 200, (query, resp.content[:300])

    run()
    assert len(seen) >= 10, seen

    resp = client.patch(
        "/api/v1/models/schemer/m",
        {"royalty": 0.25},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )
    assert resp.status_code == 200, resp.content
