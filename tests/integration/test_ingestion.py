"""Issue 3 through HTTP: all three formats reach ready and match eager PyTorch; broken and
hostile uploads fail with a precise reason and no effect outside the sandbox."""

from __future__ import annotations

import importlib.util
import os
import pickle
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from tests.stack import REPO

pytestmark = pytest.mark.integration


def _examples_module():
    spec = importlib.util.spec_from_file_location("mp_build_examples", REPO / "examples" / "build_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    module = _examples_module()
    out = tmp_path_factory.mktemp("examples")
    manifest = module.build(out)
    return module, out, manifest


def upload_example(api, out: Path, name: str, spec: dict, model_name: str):
    assert api.post("/api/v1/models", json={"name": model_name}).status_code == 201
    fields = {k: spec[k] for k in ("entrypoint", "init_kwargs", "inputs", "outputs") if k in spec}
    if "source" in spec:
        fields["source"] = out / spec["source"]
    resp = api.upload(api.username, model_name, fmt=spec["format"], artifact=out / spec["artifact"], **fields)
    assert resp.status_code == 202, resp.text
    return resp.json()["version"]


def predict(api, model: str, inputs: dict[str, np.ndarray]) -> dict:
    resp = api.post(f"/api/v1/models/{model}/predictions", json={"input": {k: v.tolist() for k, v in inputs.items()}},
                    headers={"Prefer": "wait"})
    assert resp.status_code == 200, resp.text
    return resp.json()["output"]


def test_every_example_reaches_ready_and_matches_eager_pytorch(user_api, examples):
    module, out, manifest = examples
    api = user_api("ingest")
    started = {}
    for name, spec in manifest.items():
        started[name] = time.monotonic()
        upload_example(api, out, name, spec, name.replace("_", "-"))
    versions = {name: api.wait_version("ingest", name.replace("_", "-"), 1, timeout=300) for name in manifest}
    for name, version in versions.items():
        assert version["status"] == "ready", (name, version["error"], version.get("log", "")[-3000:])
    for name in ("cnn", "lstm", "two_io"):
        report = versions[name]["report"]
        assert report["parity_max_abs_error"] is not None and report["parity_max_abs_error"] < 1e-4, report
        assert report["parameter_count"] > 0 and report["opset"]
    assert versions["lstm"]["signature"]["inputs"] == [{"name": "tokens", "dtype": "int64", "shape": [None, None]}]
    assert [o["name"] for o in versions["two_io"]["signature"]["outputs"]] == ["score", "embedding"]

    rng = np.random.default_rng(11)
    with torch.no_grad():
        lstm = module.build_lstm()
        for seq in (3, 17, 40):  # three sequence lengths through one hosted artifact
            tokens = rng.integers(0, 1000, size=(2, seq)).astype(np.int64)
            got = np.asarray(predict(api, "ingest/lstm", {"tokens": tokens})["logits"])
            want = lstm(torch.from_numpy(tokens)).numpy()
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
        cnn = module.build_cnn()
        image = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
        np.testing.assert_allclose(np.asarray(predict(api, "ingest/cnn", {"image": image})["logits"]),
                                   cnn(torch.from_numpy(image)).numpy(), atol=1e-4, rtol=1e-4)
        two = module.build_two_io()
        feats = rng.standard_normal((3, 8)).astype(np.float32)
        ctx = rng.standard_normal((3, 4)).astype(np.float32)
        out_two = predict(api, "ingest/two-io", {"features": feats, "context": ctx})
        want_score, want_emb = two(torch.from_numpy(feats), torch.from_numpy(ctx))
        np.testing.assert_allclose(np.asarray(out_two["score"]), want_score.numpy(), atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(np.asarray(out_two["embedding"]), want_emb.numpy(), atol=1e-4, rtol=1e-4)
        mlp = module.build_mlp()
        x = rng.standard_normal((2, 784)).astype(np.float32)
        np.testing.assert_allclose(np.asarray(predict(api, "ingest/mlp", {"input": x})["logits"]),
                                   mlp(torch.from_numpy(x)).numpy(), atol=1e-5, rtol=1e-5)


LINEAR_SOURCE = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(4, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(torch.relu(self.encoder(x)))
"""


def _state_dict_upload(api, tmp_path, model: str, weights: dict, source: str = LINEAR_SOURCE, suffix=".safetensors"):
    from safetensors.torch import save_file

    src = tmp_path / f"{model}.py"
    src.write_text(source)
    path = tmp_path / f"{model}{suffix}"
    if suffix == ".safetensors":
        save_file(weights, str(path))
    else:
        path.write_bytes(weights)
    assert api.post("/api/v1/models", json={"name": model}).status_code == 201
    resp = api.upload(api.username, model, fmt="state_dict", artifact=path, source=src, entrypoint="Net",
                      inputs=[{"name": "x", "dtype": "float32", "shape": [None, 4]}])
    assert resp.status_code == 202, resp.text
    return api.wait_version(api.username, model, 1, timeout=180)


def _good_weights() -> dict:
    torch.manual_seed(0)
    return {"encoder.weight": torch.randn(3, 4), "encoder.bias": torch.randn(3),
            "head.weight": torch.randn(2, 3), "head.bias": torch.randn(2)}


def test_state_dict_mismatches_name_keys_and_shapes(user_api, tmp_path):
    api = user_api("mismatch")
    renamed = _good_weights()
    renamed["enc.weight"] = renamed.pop("encoder.weight")
    version = _state_dict_upload(api, tmp_path, "renamed", renamed)
    assert version["status"] == "failed"
    assert version["error"]["code"] == "state_dict_mismatch"
    assert "encoder.weight" in version["error"]["message"] and "enc.weight" in version["error"]["message"]

    wrong = _good_weights()
    wrong["head.weight"] = torch.randn(5, 3)
    version = _state_dict_upload(api, tmp_path, "shapes", wrong)
    assert version["status"] == "failed" and version["error"]["code"] == "state_dict_mismatch"
    message = version["error"]["message"]
    assert "head.weight" in message and "[2, 3]" in message.replace("(", "[").replace(")", "]") \
        and "[5, 3]" in message.replace("(", "[").replace(")", "]")


class _Rce:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_uploads_fail_without_effect(user_api, tmp_path, live):
    api = user_api("hostile")
    marker = tmp_path / "PWNED"
    payload = pickle.dumps({"encoder.weight": _Rce(str(marker))})
    version = _state_dict_upload(api, tmp_path, "rce", payload, suffix=".pt")
    assert version["status"] == "failed"
    assert version["error"]["code"] == "weights_rejected", version["error"]
    assert not marker.exists()

    secret_probe = LINEAR_SOURCE + """
import os
raise RuntimeError("ENV=" + ",".join(sorted(k for k in os.environ if k in (
    "SECRET_KEY", "DATABASE_URL", "REDIS_URL", "MODELPORT_ARTIFACT_ROOT"))) + ";END")
"""
    version = _state_dict_upload(api, tmp_path, "envprobe", _good_weights(), source=secret_probe)
    assert version["status"] == "failed"
    text = version["error"]["message"] + version.get("log", "")
    assert "ENV=;END" in text, text[-2000:]

    # ONNX whose external data points outside the upload.
    for location in ("../../etc/passwd", "/etc/passwd"):
        tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
        tensor.data_location = TensorProto.EXTERNAL
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", location
        graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], initializer=[tensor])
        path = tmp_path / "ext.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        name = f"ext{len(location)}"
        assert api.post("/api/v1/models", json={"name": name}).status_code == 201
        assert api.upload("hostile", name, fmt="onnx", artifact=path).status_code == 202
        version = api.wait_version("hostile", name, 1)
        assert version["status"] == "failed" and version["error"]["code"] == "external_data"
        assert location.lstrip("/").split("/")[-1] in version["error"]["message"] or "absolute" in \
            version["error"]["message"] or ".." in version["error"]["message"]
