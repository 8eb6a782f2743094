"""modelport_client.Client against the live platform: create, push, wait, predict, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from modelport_client import Client, ModelportError, Prediction

from tests.conftest import make_user
from workers.demo import mlp_onnx

pytestmark = pytest.mark.integration


@pytest.fixture
def client(live) -> Client:
    _, key = make_user("pyclient")
    with Client(url=live.base_url, api_key=key) as client:
        yield client


def test_push_wait_and_predict_match_onnxruntime(client, tmp_path: Path):
    path = mlp_onnx(tmp_path / "mlp.onnx", sizes=(16, 32, 3), seed=5)
    created = client.create_model("mlp", visibility="private", description="tiny MLP")
    assert (created["owner"], created["name"], created["visibility"]) == ("pyclient", "mlp", "private")
    assert created["default_version"] is None

    uploads: list[tuple[int, int]] = []
    statuses: list[str] = []
    version = client.push(
        "pyclient/mlp",
        format="onnx",
        artifact=path,
        on_upload=lambda sent, total: uploads.append((sent, total)),
        on_progress=lambda v: statuses.append(v["status"]),
    )
    size = path.stat().st_size
    assert uploads[0] == (0, size) and uploads[-1] == (size, size)
    assert statuses[-1] == "ready" and statuses[0] in ("queued", "validating", "ready")
    assert version["status"] == "ready" and version["version"] == 1
    assert version["signature"]["inputs"] == [{"name": "x", "dtype": "float32", "shape": [None, 16]}]
    assert [m["name"] for m in client.models() if m["owner"] == "pyclient"] == ["mlp"]
    assert client.model("pyclient/mlp")["default_version"] == 1

    x = np.random.default_rng(2).standard_normal((4, 16)).astype(np.float32)
    expected = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    before = client.account()["credits_micro"]
    result = client.predict("pyclient/mlp", {"x": x})
    assert isinstance(result, Prediction)
    assert list(result) == ["y"]
    assert result["y"].dtype == np.float32 and result["y"].shape == (4, 3)
    assert np.max(np.abs(result["y"] - expected)) <= 1e-6
    assert result.version == 1 and result.raw["status"] == "succeeded"
    charged = result.credits["charged_micro"]
    assert charged > 0 and result.credits["charged"] == charged / 1_000_000
    assert client.account()["credits_micro"] == before - charged

    pinned = client.predict("pyclient/mlp", {"x": x[:1]}, version=1)
    assert np.max(np.abs(pinned["y"] - expected[:1])) <= 1e-6
    queued = client.predict("pyclient/mlp", {"x": x[:1]}, wait=False)
    assert queued["status"] in ("starting", "processing", "succeeded")
    assert client.prediction(queued["id"])["id"] == queued["id"]


def test_errors_carry_the_problem_fields(client, tmp_path: Path, live):
    with pytest.raises(ModelportError) as info:
        client.predict("pyclient/missing", {"x": np.zeros((1, 16), np.float32)})
    error = info.value
    assert error.status == 404 and error.title == "Not Found"
    assert error.type.endswith("/not-found") and "pyclient/missing" in error.detail
    assert str(error) == f"404 Not Found: {error.detail}"

    client.create_model("mlp")
    version = client.push("pyclient/mlp", format="onnx", artifact=mlp_onnx(tmp_path / "m.onnx", sizes=(16, 3)))
    assert version["status"] == "ready"
    with pytest.raises(ModelportError) as info:
        client.predict("pyclient/mlp", {"z": np.zeros((1, 16), np.float32)})
    assert info.value.status == 400 and "unknown input 'z'" in info.value.detail

    with pytest.raises(ModelportError) as info:
        client.create_model("mlp")
    assert info.value.status == 409

    with pytest.raises(ModelportError) as info:
        client.push("pyclient/mlp", format="state_dict", artifact=tmp_path / "m.onnx")
    assert info.value.status == 400 and info.value.errors == {"source": ["required"]}

    with Client(url=live.base_url, api_key="mp_nope_nope") as bad, pytest.raises(ModelportError) as info:
        bad.account()
    assert info.value.status == 401


def test_configuration_from_the_environment(live, monkeypatch):
    _, key = make_user("envuser", credits=7)
    monkeypatch.setenv("MODELPORT_URL", live.base_url + "/")
    monkeypatch.setenv("MODELPORT_API_KEY", key)
    with Client() as client:
        assert client.url == live.base_url
        assert client.status() == {
            "url": live.base_url,
            "username": "envuser",
            "credits": 7.0,
            "credits_micro": 7_000_000,
            "max_price": None,
            "is_staff": False,
        }
    monkeypatch.delenv("MODELPORT_API_KEY")
    with pytest.raises(ModelportError, match="MODELPORT_API_KEY"):
        Client()
