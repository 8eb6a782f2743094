"""Upload errors say what to do, the report tells the truth, and hostile or oversized ONNX is
refused plainly (issue 17 items 4 and 6; issue 16 items 8, 14 and 16), through the HTTP API with
the real conversion and serving workers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from modelport.registry.selectors import REPORT_FIELDS
from safetensors.torch import save_file

from tests.conftest import Api, make_user
from tests.workers import hostile_onnx

pytestmark = pytest.mark.integration

SOURCE = """
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
X = [{"name": "x", "dtype": "float32", "shape": [None, 4]}]


def _net(tmp_path: Path) -> torch.nn.Module:
    """SOURCE's Net, importable by module name so torch.save(model) can pickle the whole thing."""
    path = tmp_path / "mp_upload_net.py"
    path.write_text(SOURCE)
    spec = importlib.util.spec_from_file_location("mp_upload_net", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["mp_upload_net"] = module
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    return module.Net().eval()


def _upload(api: Api, model: str, *, fmt: str, artifact: Path, source: Path | None = None) -> dict:
    assert api.post("/api/v1/models", json={"name": model}).status_code == 201
    fields = {"source": source, "entrypoint": "Net"} if fmt == "state_dict" else {}
    resp = api.upload(api.username, model, fmt=fmt, artifact=artifact, inputs=X, **fields)
    assert resp.status_code == 202, resp.text
    return api.wait_version(api.username, model, 1, timeout=240)


def _predict(api: Api, model: str, x: np.ndarray) -> np.ndarray:
    resp = api.post(f"/api/v1/models/{api.username}/{model}/predictions", json={"input": {"x": x.tolist()}},
                    headers={"Prefer": "wait"})
    assert resp.status_code == 200, resp.text
    return np.asarray(resp.json()["output"]["output"], dtype=np.float32)


def test_upload_errors_say_what_to_do(user_api, tmp_path: Path) -> None:
    api = user_api("advice")
    net = _net(tmp_path)
    source = tmp_path / "my_network.py"
    source.write_text(SOURCE)

    torch.save(net, tmp_path / "whole.pt")
    version = _upload(api, "whole", fmt="state_dict", artifact=tmp_path / "whole.pt", source=source)
    assert version["status"] == "failed"
    assert version["error"]["code"] == "weights_rejected"
    assert "this file pickles a whole module; save `model.state_dict()` instead" in version["error"]["message"]

    torch.save(net.state_dict(), tmp_path / "weights.pt")
    version = _upload(api, "sd-as-ts", fmt="torchscript", artifact=tmp_path / "weights.pt")
    assert version["status"] == "failed"
    assert version["error"]["code"] == "torchscript_rejected"
    assert "this is a state_dict, not a TorchScript archive; use format=state_dict" in version["error"]["message"]

    broken = tmp_path / "broken_network.py"
    broken.write_text(SOURCE.replace("def forward(self, x):", "def forward(self x):"))
    version = _upload(api, "syntax", fmt="state_dict", artifact=tmp_path / "weights.pt", source=broken)
    assert version["status"] == "failed" and version["error"]["code"] == "source_error"
    head, line, caret = version["error"]["message"].split("\n")
    assert head.startswith("broken_network.py has a syntax error at line 12: ")
    assert line == "    def forward(self x):" and caret.strip() == "^"

    # Weights saved from nn.DataParallel: loaded with the prefix stripped, and the report says so.
    save_file({f"module.{k}": v for k, v in net.state_dict().items()}, str(tmp_path / "dp.safetensors"))
    version = _upload(api, "dp", fmt="state_dict", artifact=tmp_path / "dp.safetensors", source=source)
    assert version["status"] == "ready", version["error"]
    assert version["report"]["state_dict_prefix_stripped"] == "module."
    # Every field of a converted model's report has a label for people.
    assert set(version["report"]) - set(REPORT_FIELDS) == set()
    x = np.random.default_rng(5).standard_normal((3, 4)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(_predict(api, "dp", x), net(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_hostile_and_oversized_onnx_is_refused_plainly(user_api, tmp_path: Path) -> None:
    api = user_api("onnxguard")
    cases = {
        "constant": (hostile_onnx.constant_with_external_data, "external_data",
                     "external data refused: tensor 'w' (attribute 'value' of node 'Constant') stores its data in "
                     "external file '../../etc/passwd': '..' is not allowed in external data paths"),
        "branch": (hostile_onnx.if_branch_with_external_data, "external_data",
                   "external data refused: tensor 'secret' (initializer of subgraph 'then') stores its data in "
                   "external file '../../etc/passwd': '..' is not allowed in external data paths"),
        "huge": (hostile_onnx.huge_static_input, "input_too_large",
                 "input 'x' has the static shape [100000, 100000, 100]: 1,000,000,000,000 elements"),
    }
    for name, (build, code, message) in cases.items():
        path = build(tmp_path / f"{name}.onnx")
        assert api.post("/api/v1/models", json={"name": name}).status_code == 201
        assert api.upload(api.username, name, fmt="onnx", artifact=path).status_code == 202
        version = api.wait_version(api.username, name, 1)
        assert version["status"] == "failed"
        assert version["error"]["code"] == code, version["error"]
        assert version["error"]["message"].startswith(message)
        assert "Traceback" not in version["error"]["message"] + version.get("log", "")


def test_report_memory_is_measured(user_api, tmp_path: Path) -> None:
    api = user_api("truth")
    sizes = {"small": 16, "big": 2048}  # a 16 KiB and a 16 MiB weight
    reports = {}
    for name, n in sizes.items():
        assert api.post("/api/v1/models", json={"name": name}).status_code == 201
        resp = api.upload(api.username, name, fmt="onnx", artifact=hostile_onnx.matmul(tmp_path / f"{name}.onnx", n))
        assert resp.status_code == 202, resp.text
        version = api.wait_version(api.username, name, 1)
        assert version["status"] == "ready", version["error"]
        reports[name] = version["report"]
    assert reports["small"]["peak_memory_mb"] > 0
    assert reports["big"]["peak_memory_mb"] >= 16
    assert reports["big"]["peak_memory_mb"] > reports["small"]["peak_memory_mb"] + 12
    assert reports["big"]["latency_ms_p50"] > 0
    assert set(reports["big"]) - set(REPORT_FIELDS) == set()


def test_model_with_external_data_becomes_ready_and_answers(fleet, tmp_path: Path) -> None:
    """A conversion worker told to keep tensors over 16 bytes outside the .onnx (as it does for
    models over ~1.9 GB): the data is stored beside the model and the serving worker loads it."""
    from django.conf import settings
    from modelport.registry.models import ModelVersion
    from modelport.registry.storage import artifact_store

    fleet.start_worker("convert", serve=False, queues=[f"{fleet.prefix}.convert"],
                       MODELPORT_ONNX_EXTERNAL_DATA_OVER_BYTES="16")
    fleet.wait_for_serving(fleet.start_worker("serve", serve=True))
    _, key = make_user("bigmodel")
    api = Api(fleet.base_url, key)
    api.username = "bigmodel"
    net = _net(tmp_path)
    source = tmp_path / "net.py"
    source.write_text(SOURCE)
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    version = _upload(api, "split", fmt="state_dict", artifact=tmp_path / "w.safetensors", source=source)
    assert version["status"] == "ready", (version["error"], version.get("log", "")[-2000:])
    # Linear(4, 3) + Linear(3, 2): 12 + 3 + 6 + 2 float32 values, all in the data file.
    assert version["report"]["external_data_bytes"] == 23 * 4

    row = ModelVersion.objects.get(model__name="split")
    stored = artifact_store().path(row.artifact_sha256)
    beside = sorted(p.name for p in stored.parent.iterdir() if p.name.endswith(".onnxdata"))
    assert len(beside) == 1 and len(beside[0]) == 64 + len(".onnxdata")
    graph = onnx.load(str(stored), load_external_data=False).graph
    locations = {e.value for t in graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == set(beside)  # every weight is in the data file beside the model
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer)
    assert settings.MODELPORT_ARTIFACT_ROOT in stored.parents

    x = np.random.default_rng(7).standard_normal((2, 4)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(_predict(api, "split", x), net(torch.from_numpy(x)).numpy(), atol=1e-5)
