"""Open Inference Protocol through an unmodified tritonclient.http client."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.http as httpclient
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.integration

# (V2 datatype, numpy dtype, ONNX type)
DTYPES = [
    ("FP32", np.float32, TensorProto.FLOAT),
    ("FP16", np.float16, TensorProto.FLOAT16),
    ("INT64", np.int64, TensorProto.INT64),
    ("INT32", np.int32, TensorProto.INT32),
    ("BOOL", np.bool_, TensorProto.BOOL),
    ("UINT8", np.uint8, TensorProto.UINT8),
]


def identity_pair_onnx(path: Path) -> Path:
    """Six inputs, one per dtype; each output is its input passed through Identity."""
    nodes, inputs, outputs = [], [], []
    for datatype, _, onnx_type in DTYPES:
        name = datatype.lower()
        inputs.append(helper.make_tensor_value_info(f"in_{name}", onnx_type, ["batch", 4]))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", onnx_type, ["batch", 4]))
        nodes.append(helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]))
    graph = helper.make_graph(nodes, "dtypes", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def sample(dtype: type, rng: np.random.Generator) -> np.ndarray:
    if dtype is np.bool_:
        return rng.integers(0, 2, size=(2, 4)).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 200, size=(2, 4)).astype(dtype)
    return rng.standard_normal((2, 4)).astype(dtype)


@pytest.fixture
def triton(user_api, live, tmp_path):
    api = user_api("tri")
    assert api.post("/api/v1/models", json={"name": "dtypes"}).status_code == 201
    assert api.upload("tri", "dtypes", fmt="onnx", artifact=identity_pair_onnx(tmp_path / "d.onnx")).status_code == 202
    assert api.wait_version("tri", "dtypes", 1)["status"] == "ready"
    key = api.http.headers["Authorization"]
    client = httpclient.InferenceServerClient(url=live.base_url.removeprefix("http://"))
    yield client, {"Authorization": key}, api
    client.close()


def _infer(client, headers, *, binary_in: bool, binary_out: bool, version: str = "", compress: str | None = None,
           request_id: str = ""):
    rng = np.random.default_rng(7)
    inputs, expected, outputs = [], {}, []
    for datatype, dtype, _ in DTYPES:
        name = datatype.lower()
        arr = sample(dtype, rng)
        inp = httpclient.InferInput(f"in_{name}", list(arr.shape), datatype)
        inp.set_data_from_numpy(arr, binary_data=binary_in)
        inputs.append(inp)
        outputs.append(httpclient.InferRequestedOutput(f"out_{name}", binary_data=binary_out))
        expected[f"out_{name}"] = arr
    result = client.infer("tri/dtypes", inputs, outputs=outputs, model_version=version, headers=dict(headers),  # the client mutates it
                          request_id=request_id, request_compression_algorithm=compress,
                          response_compression_algorithm=compress)
    return result, expected


@pytest.mark.parametrize(("binary_in", "binary_out"), [(True, True), (False, False), (True, False), (False, True)])
def test_infer_every_dtype_binary_and_json(triton, binary_in, binary_out):
    client, headers, api = triton
    before = api.balance_micro()
    result, expected = _infer(client, headers, binary_in=binary_in, binary_out=binary_out)
    for name, arr in expected.items():
        got = result.as_numpy(name)
        assert got.dtype == arr.dtype, name
        np.testing.assert_array_equal(got, arr)
    response = result.get_response()
    charged = response["parameters"]["credits_charged"]
    assert charged > 0
    assert api.balance_micro() == before - round(charged * 1_000_000)


def test_infer_gzip_id_echo_and_version_path(triton):
    client, headers, _ = triton
    result, expected = _infer(client, headers, binary_in=True, binary_out=True, version="1", compress="gzip",
                              request_id="req-42")
    response = result.get_response()
    assert response["id"] == "req-42"
    assert response["model_name"] == "tri/dtypes" and response["model_version"] == "1"
    np.testing.assert_array_equal(result.as_numpy("out_fp32"), expected["out_fp32"])
    result, _ = _infer(client, headers, binary_in=False, binary_out=False, compress="deflate")
    np.testing.assert_array_equal(result.as_numpy("out_int64"), expected["out_int64"])


def test_health_metadata_and_readiness(triton, user_api, tmp_path):
    client, headers, api = triton
    assert client.is_server_live(headers=headers)
    assert client.is_server_ready(headers=headers)
    assert client.is_model_ready("tri/dtypes", headers=headers)
    assert client.is_model_ready("tri/dtypes", model_version="1", headers=headers)
    assert not client.is_model_ready("tri/dtypes", model_version="9", headers=headers)
    assert not client.is_model_ready("tri/missing", headers=headers)
    meta = client.get_server_metadata(headers=headers)
    assert "binary_tensor_data" in meta["extensions"]
    model_meta = client.get_model_metadata("tri/dtypes", headers=headers)
    assert model_meta["name"] == "tri/dtypes" and model_meta["versions"] == ["1"]
    by_name = {t["name"]: t for t in model_meta["inputs"]}
    assert by_name["in_fp16"] == {"name": "in_fp16", "datatype": "FP16", "shape": [-1, 4]}
    # A version that is not ready (a broken upload) reads as not ready.
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    assert api.upload("tri", "dtypes", fmt="onnx", artifact=bad).status_code == 202
    assert api.wait_version("tri", "dtypes", 2)["status"] == "failed"
    assert not client.is_model_ready("tri/dtypes", model_version="2", headers=headers)
    # Another user cannot see the private model at all.
    other = user_api("other")
    other_headers = {"Authorization": other.http.headers["Authorization"]}
    assert not client.is_model_ready("tri/dtypes", headers=other_headers)
    with pytest.raises(InferenceServerException, match="not found"):
        client.get_model_metadata("tri/dtypes", headers=other_headers)


def test_errors_are_json_and_nothing_is_charged(triton, live):
    import httpx

    client, headers, api = triton
    before = api.balance_micro()
    inp = httpclient.InferInput("in_fp32", [2, 5], "FP32")
    inp.set_data_from_numpy(np.zeros((2, 5), np.float32))
    with pytest.raises(InferenceServerException, match="missing input 'in_fp16'"):
        client.infer("tri/dtypes", [inp], headers=dict(headers))
    rng = np.random.default_rng(0)
    inputs = []
    for datatype, dtype, _ in DTYPES:
        arr = np.zeros((2, 5), np.float32) if datatype == "FP32" else sample(dtype, rng)
        inputs.append(httpclient.InferInput(f"in_{datatype.lower()}", list(arr.shape), datatype))
        inputs[-1].set_data_from_numpy(arr)
    with pytest.raises(InferenceServerException, match=r"input 'in_fp32': shape \[2, 5\] does not match \[\?, 4\]"):
        client.infer("tri/dtypes", inputs, headers=dict(headers))
    resp = httpx.post(f"{live.base_url}/v2/models/tri/dtypes/infer", content=b"{not json", headers=headers)
    assert resp.status_code == 400 and "error" in resp.json()
    resp = httpx.get(f"{live.base_url}/v2/models/tri/dtypes/nonsense", headers=headers)
    assert resp.status_code == 404 and "error" in resp.json()
    resp = httpx.post(f"{live.base_url}/v2/models/tri/dtypes/infer", content=b"{}")
    assert resp.status_code == 401 and "error" in resp.json()
    assert api.balance_micro() == before
