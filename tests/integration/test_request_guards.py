"""Issue 16 items 10, 11, 13 and 15: requests the API must refuse cleanly, changing nothing."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import staff_key
from workers.demo import mlp_onnx

pytestmark = pytest.mark.integration
X = {"x": [[0.25] * 16]}


@pytest.fixture
def api(user_api, tmp_path):
    api = user_api("guarded")
    assert api.post("/api/v1/models", json={"name": "tiny"}).status_code == 201
    path = mlp_onnx(tmp_path / "tiny.onnx", sizes=(16, 8, 4))
    assert api.upload("guarded", "tiny", fmt="onnx", artifact=path).status_code == 202
    assert api.wait_version("guarded", "tiny", 1)["status"] == "ready"
    return api


def _nothing_happened(api, before: int) -> None:
    assert api.balance_micro() == before
    assert api.get("/api/v1/predictions").json()["results"] == []


def test_deeply_nested_json_is_400_problem_json_everywhere(api, live, tmp_path):
    """Item 10: nesting past the parsers' depth (orjson refuses 1024 levels, the standard library
    raises RecursionError) is invalid JSON (400 problem+json), on the native predictions endpoint
    (API key: the fast lane; session-less DRF views), on a DRF JSON view and in an upload's JSON
    field."""
    key = api.http.headers["Authorization"]
    before = api.balance_micro()
    deep = b"[" * 100_000 + b"]" * 100_000
    for prefer in ({"Prefer": "wait"}, {}):
        resp = httpx.post(f"{live.base_url}/api/v1/models/guarded/tiny/predictions", timeout=60,
                          content=b'{"input": {"x": ' + deep + b"}}",
                          headers={"Authorization": key, "Content-Type": "application/json", **prefer})
        assert resp.status_code == 400, resp.text
        assert resp.headers["content-type"] == "application/problem+json"
        assert "not valid JSON" in resp.json()["detail"]
    # Nesting orjson parses but numpy cannot hold (more than 64 dimensions): 400 too.
    resp = httpx.post(f"{live.base_url}/api/v1/models/guarded/tiny/predictions", timeout=60,
                      content=b'{"input": {"x": ' + b"[" * 500 + b"]" * 500 + b"}}",
                      headers={"Authorization": key, "Content-Type": "application/json", "Prefer": "wait"})
    assert resp.status_code == 400 and resp.json()["errors"] == {"x": ["ragged nested list (rows of different "
                                                                          "lengths)"]}, resp.text
    resp = api.patch("/api/v1/models/guarded/tiny", content=b'{"description": ' + deep + b"}",
                     headers={"Content-Type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert api.get("/api/v1/models/guarded/tiny").json()["description"] == ""
    path = mlp_onnx(tmp_path / "again.onnx", sizes=(16, 8, 4))
    resp = api.upload("guarded", "tiny", fmt="onnx", artifact=path, inputs=deep.decode())
    assert resp.status_code == 400 and resp.json()["errors"] == {"inputs": ["nested too deeply"]}, resp.text
    resp = api.upload("guarded", "tiny", fmt="onnx", artifact=path, inputs="[" + "9" * 5000 + "]")
    assert resp.status_code == 400 and "inputs is not valid JSON" in resp.json()["detail"], resp.text
    assert [v["version"] for v in api.get("/api/v1/models/guarded/tiny/versions").json()["results"]] == [1]
    _nothing_happened(api, before)


def _infer(live, key: str, body: bytes) -> httpx.Response:
    return httpx.post(f"{live.base_url}/v2/models/guarded/tiny/infer", content=body, timeout=60,
                      headers={"Authorization": key})


def _v2_body(data: str, parameters: str = "{}") -> bytes:
    return (f'{{"parameters": {parameters}, "inputs": [{{"name": "x", "shape": [1, 16], "datatype": "FP32", '
            f'"data": [{data}]}}]}}').encode()


def test_v2_timeout_of_the_wrong_type_is_400(api, live):
    """Item 11: V2's `parameters.timeout` (µs) must be a positive number, as the native API's
    Modelport-Deadline-Ms must; anything else is refused before anything is held."""
    key = api.http.headers["Authorization"]
    before = api.balance_micro()
    zeros = ", ".join(["0.5"] * 16)
    for bad in ('"5000000"', "true", "null", "[1]", '{"us": 1}', "0", "-5"):
        if bad == "null":  # null is "not given": the call runs with the platform's deadline
            continue
        resp = _infer(live, key, _v2_body(zeros, f'{{"timeout": {bad}}}'))
        assert resp.status_code == 400, (bad, resp.text)
        assert "timeout" in resp.json()["error"] or "deadline" in resp.json()["error"], resp.text
    _nothing_happened(api, before)
    resp = _infer(live, key, _v2_body(zeros, '{"timeout": 5000000}'))
    assert resp.status_code == 200, resp.text
    assert api.balance_micro() == before - round(resp.json()["parameters"]["credits_charged"] * 1_000_000)


def test_v2_json_refuses_nan_infinity_and_overflow_like_native(api, live):
    """Item 13 (first half): NaN, Infinity and numbers past a double (1e999) are not JSON; the
    native API refuses them and V2 JSON now does too (400 {"error"}), charging nothing."""
    key = api.http.headers["Authorization"]
    before = api.balance_micro()
    for bad in ("NaN", "Infinity", "-Infinity", "1e999"):
        data = ", ".join([bad] + ["0.5"] * 15)
        resp = _infer(live, key, _v2_body(data))
        assert resp.status_code == 400, (bad, resp.text)
        assert set(resp.json()) == {"error"}
        native = api.post("/api/v1/models/guarded/tiny/predictions", headers={"Prefer": "wait"},
                          content=f'{{"input": {{"x": [[{data}]]}}}}'.encode())
        assert native.status_code == 400, (bad, native.text)
    _nothing_happened(api, before)


def test_idempotency_key_replayed_with_another_body_is_422(api):
    """Item 13 (second half): an Idempotency-Key is bound to the request it was first used with
    (path and body, key order and whitespace aside): the same request replays the first result,
    another one is refused with 422 and runs nothing."""
    url = "/api/v1/models/guarded/tiny/predictions"
    headers = {"Prefer": "wait", "Idempotency-Key": "order-42"}
    before = api.balance_micro()
    first = api.post(url, json={"input": X}, headers=headers)
    assert first.status_code == 200, first.text
    charged = first.json()["credits"]["charged_micro"]
    same = api.post(url, content=b'{ "input" : {"x": [[' + b", ".join([b"0.25"] * 16) + b"]]} }",
                    headers={**headers, "Content-Type": "application/json"})
    assert same.status_code == 200 and same.json()["id"] == first.json()["id"]
    other = api.post(url, json={"input": {"x": [[0.5] * 16]}}, headers=headers)
    assert other.status_code == 422, other.text
    problem = other.json()
    assert other.headers["content-type"] == "application/problem+json"
    assert problem["prediction_id"] == first.json()["id"] and "different request" in problem["detail"]
    elsewhere = api.post("/api/v1/models/guarded/tiny/versions/1/predictions", json={"input": X}, headers=headers)
    assert elsewhere.status_code == 422, elsewhere.text  # another path is another request
    assert api.balance_micro() == before - charged
    assert [p["id"] for p in api.get("/api/v1/predictions").json()["results"]] == [first.json()["id"]]


def test_only_a_session_or_a_staff_key_creates_keys(user_api, live):
    """Item 15: an ordinary API key cannot mint keys (403, nothing created); the dashboard's
    session and a staff user's key can."""
    from django.test import Client
    from modelport.accounts.models import ApiKey

    api = user_api("minter")
    before = list(ApiKey.objects.filter(user__username="minter").values_list("prefix", flat=True))
    resp = api.post("/api/v1/keys", json={"name": "escape hatch"})
    assert resp.status_code == 403, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert "cannot create keys" in resp.json()["detail"]
    assert list(ApiKey.objects.filter(user__username="minter").values_list("prefix", flat=True)) == before
    assert api.get("/api/v1/keys").status_code == 200  # listing stays open to the key
    staff = httpx.post(f"{live.base_url}/api/v1/keys", json={"name": "ops"}, timeout=30,
                       headers={"Authorization": f"Bearer {staff_key()}"})
    assert staff.status_code == 201 and staff.json()["key"].startswith("mp_"), staff.text
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.get(username="minter")
    user.set_password("pw-minter-1")
    user.save()
    browser = Client()
    assert browser.login(username="minter", password="pw-minter-1")
    made = browser.post("/api/v1/keys", data={"name": "from the dashboard"}, content_type="application/json")
    assert made.status_code == 201, made.content
    assert ApiKey.objects.filter(user__username="minter", name="from the dashboard").count() == 1
