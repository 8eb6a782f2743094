"""One rule for what an upload declares (issue 17 item 5): the web tier refuses with 400 exactly
what the converter would refuse later, with the converter's own message, and stores nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from modelport.registry.models import Model, ModelVersion

from tests.conftest import make_user
from workers.convert import convert_model

X = {"name": "x", "dtype": "float32", "shape": [None, 4]}

# (field at fault, upload fields) for uploads the converter refuses.
REFUSED = {
    "uint16": ("inputs", {"inputs": [{"name": "x", "dtype": "uint16", "shape": [None, 4]}]}),
    "uint64": ("inputs", {"inputs": [{"name": "x", "dtype": "uint64", "shape": [None, 4]}]}),
    "bad_range": ("inputs", {"inputs": [{"name": "t", "dtype": "int64", "shape": [None, 3], "range": [5, 5]}]}),
    "huge_shape": ("inputs", {"inputs": [{"name": "x", "dtype": "float32", "shape": [100000, 100000]}]}),
    "keyword_entrypoint": ("entrypoint", {"inputs": [X], "entrypoint": "class"}),
    "dotted_entrypoint": ("entrypoint", {"inputs": [X], "entrypoint": "os.system"}),
    "output_named_as_input": ("outputs", {"inputs": [X], "outputs": ["y", "x"]}),
    "duplicate_outputs": ("outputs", {"inputs": [X], "outputs": ["y", "y"]}),
}


@pytest.fixture
def owner(db: Any) -> tuple[Client, str]:
    user, key = make_user("rules")
    Model.objects.create(owner=user, name="net")
    return Client(headers={"Authorization": f"Bearer {key}"}), key


def _upload(client: Client, tmp_path: Path, fields: dict[str, Any], fmt: str = "state_dict") -> Any:
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"{}")
    source = tmp_path / "net.py"
    source.write_text("class Net: pass\n")
    data: dict[str, Any] = {"format": fmt, "entrypoint": fields.get("entrypoint", "Net")}
    for key in ("inputs", "outputs"):
        if key in fields:
            data[key] = json.dumps(fields[key])
    with weights.open("rb") as artifact, source.open("rb") as src:
        data["artifact"] = artifact
        if fmt == "state_dict":
            data["source"] = src
        return client.post("/api/v1/models/rules/net/versions", data)


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_upload_the_converter_would_refuse_is_400_at_once(owner, tmp_path: Path, case: str) -> None:
    client, _ = owner
    field, fields = REFUSED[case]
    resp = _upload(client, tmp_path, fields)
    assert resp.status_code == 400, resp.content
    assert resp["Content-Type"].startswith("application/problem+json")
    body = resp.json()
    assert list(body["errors"]) == [field]
    assert not ModelVersion.objects.exists()

    # The converter's verdict on the same declaration: refused, with the very same message.
    artifact = tmp_path / "w.safetensors"
    source = tmp_path / "net.py"
    result = convert_model(
        fmt="state_dict", artifact=artifact, source=source, entrypoint=fields.get("entrypoint", "Net"),
        init_kwargs={}, inputs=fields["inputs"], work_dir=tmp_path / "work", output_names=fields.get("outputs"),
    )
    assert result.ok is False and result.error_code == f"invalid_{field}"
    assert result.error_message == body["detail"]
    assert not (tmp_path / "work").exists()  # refused before anything ran


def test_uint16_is_refused_with_the_converters_dtypes_named(owner, tmp_path: Path) -> None:
    client, _ = owner
    resp = _upload(client, tmp_path, REFUSED["uint16"][1])
    assert resp.json()["detail"] == (
        "inputs[0].dtype 'uint16' is not one of "
        "['bool', 'float16', 'float32', 'float64', 'int16', 'int32', 'int64', 'int8', 'uint8']"
    )


def test_an_onnx_upload_may_declare_what_onnxruntime_serves(owner, tmp_path: Path) -> None:
    client, _ = owner
    resp = _upload(client, tmp_path, {"inputs": [{"name": "x", "dtype": "uint16", "shape": [None]}]}, fmt="onnx")
    assert resp.status_code == 202, resp.content
    assert ModelVersion.objects.get().declared_inputs == [{"name": "x", "dtype": "uint16", "shape": [None]}]
