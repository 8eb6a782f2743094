"""The torch runtime through the HTTP API, with real web, conversion and serving worker processes:
models ONNX can't express faithfully are served by PyTorch in a sandboxed model process, with the
same answers as eager PyTorch, and its faults end calls cleanly and uncharged."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from modelport.registry.selectors import REPORT_FIELDS
from safetensors.torch import save_file

from tests.conftest import wait_recorded
from tests.integration import torch_models as MODELS
from tests.stack import REPO

pytestmark = pytest.mark.integration

SOURCE = Path(MODELS.__file__)  # sent as the uploads' source




def upload(api: Any, tmp_path: Path, name: str, model: torch.nn.Module, entrypoint: str, inputs: list[dict],
           **fields: Any) -> dict:
    weights = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    assert api.post("/api/v1/models", json={"name": name}).status_code == 201
    resp = api.upload(api.username, name, fmt="state_dict", artifact=weights, source=SOURCE, entrypoint=entrypoint,
                      inputs=inputs, **fields)
    assert resp.status_code == 202, resp.text
    return api.wait_version(api.username, name, 1, timeout=240)


def predict(api: Any, model: str, inputs: dict[str, np.ndarray], status: int = 200) -> dict:
    resp = api.post(f"/api/v1/models/{api.username}/{model}/predictions",
                    json={"input": {k: v.tolist() for k, v in inputs.items()}}, headers={"Prefer": "wait"})
    assert resp.status_code == status, resp.text
    return resp.json()


def eager(model: torch.nn.Module, *inputs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(*(torch.from_numpy(a) for a in inputs)).numpy()


def test_value_dependent_branch_is_never_onnx_and_both_branches_answer_as_eager(user_api, tmp_path):
    api = user_api("tbranch")
    torch.manual_seed(0)
    model = MODELS.Branch().eval()
    spec = [{"name": "x", "dtype": "float32", "shape": [None, 4]}]
    version = upload(api, tmp_path, "branch", model, "Branch", spec)
    assert version["status"] == "ready", version
    assert version["runtime"] == "torch"
    assert "value-dependent control flow" in version["report"]["runtime_reason"]
    assert "Converting a tensor to a Python boolean" in version["report"]["runtime_reason"]
    for sign in (1.0, -1.0):
        x = (np.abs(np.random.default_rng(3).standard_normal((2, 4))) * sign).astype(np.float32)
        out = predict(api, "branch", {"x": x})
        assert out["status"] == "succeeded"
        np.testing.assert_allclose(np.array(out["output"]["output"], dtype=np.float32), eager(model, x), atol=1e-6)
        assert out["credits"]["charged"] > 0
        # The Open Inference Protocol reaches the same process.
        v2 = api.post(f"/v2/models/{api.username}/branch/infer", json={"inputs": [
            {"name": "x", "shape": [2, 4], "datatype": "FP32", "data": x.ravel().tolist()}]})
        assert v2.status_code == 200, v2.text
        np.testing.assert_allclose(np.array(v2.json()["outputs"][0]["data"], dtype=np.float32),
                                   eager(model, x).ravel(), atol=1e-6)

    # runtime=onnx: refused, not converted down one path.
    assert api.post("/api/v1/models", json={"name": "branch-onnx"}).status_code == 201
    weights = tmp_path / "branch.safetensors"
    resp = api.upload(api.username, "branch-onnx", fmt="state_dict", artifact=weights, source=SOURCE,
                      entrypoint="Branch", inputs=spec, runtime="onnx")
    assert resp.status_code == 202, resp.text
    refused = api.wait_version(api.username, "branch-onnx", 1, timeout=240)
    assert refused["status"] == "failed"
    assert refused["error"]["code"] == "not_faithful"


def test_packed_gru_goes_to_torch_and_matches_eager_on_variable_lengths(user_api, tmp_path):
    api = user_api("tgru")
    torch.manual_seed(0)
    model = MODELS.PackedGRU().eval()
    spec = [{"name": "tokens", "dtype": "int64", "shape": [None, None]},
            {"name": "lengths", "dtype": "int64", "shape": [None], "range": [1, 2]}]
    version = upload(api, tmp_path, "gru", model, "PackedGRU", spec, outputs=["logits"])
    assert version["status"] == "ready", version
    assert version["runtime"] == "torch"
    assert "could not be exported to ONNX" in version["report"]["runtime_reason"]
    assert set(version["report"]) - set(REPORT_FIELDS) == set()  # every field has a label
    assert version["signature"]["outputs"] == [{"name": "logits", "dtype": "float32", "shape": [None, 3]}]
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 50, size=(3, 7)).astype(np.int64)
    for lengths in ([7, 2, 5], [1, 7, 3]):
        lens = np.array(lengths, dtype=np.int64)
        out = predict(api, "gru", {"tokens": tokens, "lengths": lens})
        np.testing.assert_allclose(np.array(out["output"]["logits"], dtype=np.float32), eager(model, tokens, lens),
                                   atol=1e-5)


def _greedy() -> torch.nn.Module:
    model = MODELS.Greedy().eval()
    with torch.no_grad():
        model.emb.weight.copy_(torch.eye(16))
        shift = torch.zeros(16, 16)
        for k in range(1, 16):
            shift[k - 1, k] = 1.0  # token k scores highest at k-1
        shift[0, 0] = 1.0
        model.out.weight.copy_(shift)
    return model


def test_greedy_decoder_output_lengths_follow_the_input(user_api, tmp_path):
    api = user_api("tgreedy")
    model = _greedy()
    spec = [{"name": "start", "dtype": "int64", "shape": [None, 1], "range": [1, 16]}]
    version = upload(api, tmp_path, "greedy", model, "Greedy", spec, outputs=["tokens"])
    assert version["status"] == "ready", version
    assert version["runtime"] == "torch"
    assert version["signature"]["outputs"][0]["shape"] == [None, None]
    lengths = []
    for start in (3, 9):
        x = np.array([[start]], dtype=np.int64)
        out = predict(api, "greedy", {"start": x})
        got = out["output"]["tokens"]
        assert got == eager(model, x).tolist()
        assert got == [list(range(start - 1, -1, -1))]
        lengths.append(len(got[0]))
    assert lengths == [3, 9]
    # Concurrent calls are not batched together (their outputs' lengths differ): each one gets
    # exactly what it gets alone.
    from concurrent.futures import ThreadPoolExecutor

    starts = [2, 5, 11, 4, 7, 15]
    with ThreadPoolExecutor(len(starts)) as pool:
        outs = list(pool.map(lambda s: predict(api, "greedy", {"start": np.array([[s]], dtype=np.int64)}), starts))
    for start, out in zip(starts, outs, strict=True):
        assert out["output"]["tokens"] == [list(range(start - 1, -1, -1))]
        assert out["metrics"]["batch_size"] == 1


def test_hostile_forward_at_serving_time_gets_nothing(user_api, tmp_path, live, request):
    api = user_api("tprobe")
    settings_path = REPO / "platform" / "modelport" / "config" / "settings.py"
    marker = Path(tempfile.mkstemp(prefix="mp-probe-", dir="/tmp")[1])
    request.addfinalizer(marker.unlink)
    model = MODELS.Probe(settings_path=str(settings_path), host_marker=str(marker)).eval()
    assert os.path.exists(model.pg_socket)  # the host has what the probe looks for
    assert settings_path.is_file()
    spec = [{"name": "x", "dtype": "float32", "shape": [None, 1]}]
    version = upload(api, tmp_path, "probe", model, "Probe", spec, runtime="torch",
                     init_kwargs={"settings_path": str(settings_path), "host_marker": str(marker)})
    assert version["status"] == "ready", version
    assert version["runtime"] == "torch"
    out = predict(api, "probe", {"x": np.ones((1, 1), dtype=np.float32)})
    # pg socket seen, unix connect, project file, secrets in env, TCP, a host /tmp file: all 0.
    assert out["output"]["output"] == [[0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]


def _account_state(api: Any) -> int:
    return api.balance_micro()


def test_faults_end_calls_uncharged_and_the_process_comes_back(user_api, tmp_path, live):
    api = user_api("tfaulty")
    model = MODELS.Faulty().eval()
    spec = [{"name": "x", "dtype": "float32", "shape": [None, 2]}]
    version = upload(api, tmp_path, "faulty", model, "Faulty", spec, runtime="torch")
    assert version["status"] == "ready", version
    assert version["runtime"] == "torch"
    assert "runtime_reason" not in version["report"]
    ok = np.array([[1.5, 2.0]], dtype=np.float32)
    first = predict(api, "faulty", {"x": ok})
    assert first["output"]["output"] == [[3.0, 4.0]]
    wait_recorded([first["id"]])
    before = _account_state(api)

    # An exception in forward: 500 with the model's message; the process keeps serving.
    raised = predict(api, "faulty", {"x": np.array([[7.0, 0.0]], dtype=np.float32)}, status=500)
    assert raised["code"] == "model_error"
    assert "ValueError: seven is not allowed" in raised["detail"]
    assert predict(api, "faulty", {"x": ok})["output"]["output"] == [[3.0, 4.0]]

    # A reply that breaks the signature (int64 where it says float32) is refused, not passed on.
    wrong = predict(api, "faulty", {"x": np.array([[21.0, 0.0]], dtype=np.float32)}, status=500)
    assert wrong["code"] == "invalid_model_output"
    assert wrong["detail"] == "output 'output' is int64, the signature says float32"

    # The process killing itself: 503, then a new process answers the next call.
    crashed = predict(api, "faulty", {"x": np.array([[500.0, 0.0]], dtype=np.float32)}, status=503)
    assert crashed["code"] == "model_crashed"
    assert "SIGKILL" in crashed["detail"]
    assert predict(api, "faulty", {"x": ok})["output"]["output"] == [[3.0, 4.0]]

    # Past its memory limit: 503, uncharged.
    hog = predict(api, "faulty", {"x": np.array([[13.0, 0.0]], dtype=np.float32)}, status=503)
    assert hog["code"] == "model_crashed"
    assert "memory" in hog["detail"]

    # A fork bomb: bounded by the process's pids cgroup; 503, and a fresh process next.
    bomb = predict(api, "faulty", {"x": np.array([[33.0, 0.0]], dtype=np.float32)}, status=503)
    assert bomb["code"] == "model_crashed"
    assert "process limit" in bomb["detail"]
    assert predict(api, "faulty", {"x": ok})["output"]["output"] == [[3.0, 4.0]]

    # Hanging past the deadline: 503 within the deadline, then served again.
    started = time.monotonic()
    resp = api.post("/api/v1/models/tfaulty/faulty/predictions",
                    json={"input": {"x": [[-500.0, 0.0]]}},
                    headers={"Prefer": "wait", "Modelport-Deadline-Ms": "3000"})
    assert resp.status_code == 503, resp.text
    assert time.monotonic() - started < 10
    assert predict(api, "faulty", {"x": ok})["output"]["output"] == [[3.0, 4.0]]

    # Only the successful calls cost anything: 4 more after `before`.
    succeeded = api.get("/api/v1/predictions").json()
    charged = [p for p in succeeded["results"] if p["status"] == "succeeded"]
    failed = [p for p in succeeded["results"] if p["status"] == "failed"]
    assert len(failed) == 6
    assert all(p["credits"]["charged"] == 0 for p in failed)
    wait_recorded([p["id"] for p in charged])
    spent = before - _account_state(api)
    newer = [p for p in charged if p["id"] != first["id"]]
    assert len(newer) == 4
    assert spent == sum(round(p["credits"]["charged"] * 1_000_000) for p in newer)


def test_exported_program_converts_under_auto_and_serves_on_torch_too(user_api, tmp_path):
    api = user_api("tprogram")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    batch = torch.export.Dim("batch", min=1, max=512)
    program = torch.export.export(model, (torch.randn(2, 4),), dynamic_shapes={"input": {0: batch}})
    path = tmp_path / "mlp.pt2"
    torch.export.save(program, str(path))
    x = np.random.default_rng(5).standard_normal((5, 4)).astype(np.float32)
    answers = {}
    for name, runtime in (("prog-auto", "auto"), ("prog-torch", "torch")):
        assert api.post("/api/v1/models", json={"name": name}).status_code == 201
        resp = api.upload(api.username, name, fmt="exported_program", artifact=path, runtime=runtime)
        assert resp.status_code == 202, resp.text
        version = api.wait_version(api.username, name, 1, timeout=240)
        assert version["status"] == "ready", version
        # The dynamic batch dim comes from the program's range constraints.
        assert version["signature"]["inputs"] == [{"name": "input", "dtype": "float32", "shape": [None, 4]}]
        answers[runtime] = (version, np.array(predict(api, name, {"input": x})["output"]["output"], dtype=np.float32))
    converted, served = answers["auto"], answers["torch"]
    assert converted[0]["runtime"] == "onnx"
    assert converted[0]["report"]["parity_max_abs_error"] < 1e-3
    assert served[0]["runtime"] == "torch"
    np.testing.assert_allclose(converted[1], eager(model, x), atol=1e-5)
    np.testing.assert_allclose(served[1], eager(model, x), atol=1e-6)
    # A file that is not a program is refused at once.
    bad = tmp_path / "mlp.onnx"
    bad.write_bytes(b"nope")
    resp = api.upload(api.username, "prog-auto", fmt="exported_program", artifact=bad)
    assert resp.status_code == 400
    assert resp.json()["errors"] == {"artifact": ["unsupported file type"]}
