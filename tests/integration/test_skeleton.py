"""Issue 2 acceptance: upload an ONNX model, have a worker validate and host it, call it, pay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from workers.demo import mlp_onnx

pytestmark = pytest.mark.integration


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    return mlp_onnx(tmp_path / "mlp.onnx", sizes=(784, 256, 10), seed=3)


def _ready_mlp(api, mlp_path: Path, name: str = "mlp") -> dict:
    assert api.post("/api/v1/models", json={"name": name, "visibility": "private"}).status_code == 201
    resp = api.upload(api.username, name, fmt="onnx", artifact=mlp_path)
    assert resp.status_code == 202, resp.text
    assert resp.json()["status"] == "queued"
    return api.wait_version(api.username, name, resp.json()["version"])


@pytest.fixture
def alice(user_api):
    api = user_api("alice")
    api.username = "alice"
    return api


def test_onnx_upload_predict_and_charge(alice, mlp_path):
    version = _ready_mlp(alice, mlp_path)
    assert version["status"] == "ready", version
    assert version["signature"] == {
        "inputs": [{"name": "x", "dtype": "float32", "shape": [None, 784]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [None, 10]}],
    }
    assert version["report"]["parity_max_abs_error"] is None
    assert version["report"]["latency_ms_p50"] > 0
    assert version["report"]["peak_memory_mb"] > 0  # measured: it was 0.00 on every version

    x = np.random.default_rng(1).standard_normal((3, 784)).astype(np.float32)
    expected = ort.InferenceSession(str(mlp_path)).run(None, {"x": x})[0]
    before = alice.balance_micro()
    resp = alice.post("/api/v1/models/alice/mlp/predictions", json={"input": {"x": x.tolist()}},
                      headers={"Prefer": "wait"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "succeeded"
    assert body["model"] == "alice/mlp" and body["version"] == 1
    got = np.asarray(body["output"]["y"], dtype=np.float32)
    assert got.shape == (3, 10)
    assert np.max(np.abs(got - expected)) <= 1e-6
    assert set(body["metrics"]) == {"queue_ms", "compute_ms", "total_ms", "batch_size"}
    charged = body["credits"]["charged_micro"]
    assert charged > 0
    assert body["credits"]["charged"] == charged / 1_000_000
    assert alice.balance_micro() == before - charged

    # The prediction is retrievable and consistent.
    again = alice.get(body["urls"]["get"].replace("http://testserver", "")).json()
    assert again["status"] == "succeeded" and again["credits"]["charged_micro"] == charged


def test_not_onnx_fails_clearly_and_charges_nothing(alice, tmp_path):
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"this is not a protobuf at all \x00\xff" * 10)
    before = alice.balance_micro()
    assert alice.post("/api/v1/models", json={"name": "bogus"}).status_code == 201
    resp = alice.upload("alice", "bogus", fmt="onnx", artifact=bogus)
    assert resp.status_code == 202
    version = alice.wait_version("alice", "bogus", 1)
    assert version["status"] == "failed"
    assert version["error"]["code"] == "not_onnx"
    assert "not an ONNX model" in version["error"]["message"]
    assert alice.balance_micro() == before
    resp = alice.post("/api/v1/models/alice/bogus/predictions", json={"input": {"x": [[0.0]]}},
                      headers={"Prefer": "wait"})
    assert resp.status_code == 503
    assert alice.balance_micro() == before


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ({"x": [[0.0] * 783]}, "input 'x': shape [1, 783] does not match [?, 784]"),
        ({"x": [[True] * 784]}, "input 'x': must contain numbers"),
        ({"z": [[0.0] * 784]}, "unknown input 'z'"),
        ({}, "missing input 'x'"),
        ({"x": [[0.0] * 784, [0.0] * 3]}, "input 'x': ragged"),
    ],
)
def test_bad_inputs_are_400_naming_the_input(alice, mlp_path, payload, needle):
    _ready_mlp(alice, mlp_path)
    before = alice.balance_micro()
    resp = alice.post("/api/v1/models/alice/mlp/predictions", json={"input": payload}, headers={"Prefer": "wait"})
    assert resp.status_code == 400
    assert resp.headers["content-type"] == "application/problem+json"
    problem = resp.json()
    assert problem["status"] == 400 and problem["title"] == "Bad Request"
    assert needle in problem["detail"]
    assert alice.balance_micro() == before
    assert alice.get("/api/v1/predictions").json()["results"] == []


def test_private_model_of_another_user_is_404(alice, user_api, mlp_path):
    _ready_mlp(alice, mlp_path)
    mallory = user_api("mallory")
    for resp in (
        mallory.get("/api/v1/models/alice/mlp"),
        mallory.get("/api/v1/models/alice/mlp/versions/1"),
        mallory.post("/api/v1/models/alice/mlp/predictions", json={"input": {"x": [[0.0] * 784]}}),
        mallory.post("/api/v1/models/alice/nothing/predictions", json={"input": {"x": [[0.0] * 784]}}),
    ):
        assert resp.status_code == 404, resp.text
        assert resp.headers["content-type"] == "application/problem+json"
    assert "alice/mlp" not in str(mallory.get("/api/v1/models").json())
    assert mallory.get("/api/v1/predictions").json()["results"] == []


def test_zero_credits_is_402_and_model_did_not_run(alice, user_api, mlp_path, live):
    _ready_mlp(alice, mlp_path)
    assert alice.patch("/api/v1/models/alice/mlp", json={"visibility": "public"}).status_code == 200
    broke = user_api("broke", credits=0)
    served_before = sum(w["served"] for w in live.serving_workers())
    resp = broke.post("/api/v1/models/alice/mlp/predictions", json={"input": {"x": [[0.0] * 784]}},
                      headers={"Prefer": "wait"})
    assert resp.status_code == 402
    problem = resp.json()
    assert problem["balance"] == 0 and problem["required"] > 0
    assert broke.balance_micro() == 0
    assert broke.get("/api/v1/predictions").json()["results"] == []
    assert sum(w["served"] for w in live.serving_workers()) == served_before


def test_no_or_bad_key_is_401(live):
    import httpx

    resp = httpx.get(f"{live.base_url}/api/v1/models")
    assert resp.status_code == 401
    assert resp.headers["content-type"] == "application/problem+json"
    resp = httpx.post(f"{live.base_url}/api/v1/models/a/b/predictions", json={},
                      headers={"Authorization": "Bearer mp_nope_nope"})
    assert resp.status_code == 401
