"""The ONNX validator (workers.onnx_validate) in its own process: external data anywhere in the
graph is vetted, unsampleable static dims are refused plainly, and the report's memory is measured."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.workers import hostile_onnx
from workers.onnx_validate import validate_in_subprocess


@pytest.mark.parametrize(
    ("build", "where"),
    [
        (hostile_onnx.constant_with_external_data, "tensor 'w' (attribute 'value' of node 'Constant')"),
        (hostile_onnx.if_branch_with_external_data, "tensor 'secret' (initializer of subgraph 'then')"),
    ],
)
def test_external_data_outside_the_upload_is_refused_wherever_it_hides(tmp_path: Path, build, where: str) -> None:
    result = validate_in_subprocess(build(tmp_path / "model.onnx"), timeout_s=60)
    assert result.ok is False
    assert result.error_code == "external_data"
    assert result.error_message == (
        f"external data refused: {where} stores its data in external file '../../etc/passwd': "
        "'..' is not allowed in external data paths"
    )
    # Even a converted model, which may keep data beside it, may not point outside its folder.
    result = validate_in_subprocess(build(tmp_path / "model.onnx"), timeout_s=60, allow_external_data=True)
    assert result.error_code == "external_data"


def test_external_data_inside_the_folder_is_refused_for_uploads(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(b"\0" * 16)
    path = hostile_onnx.constant_with_external_data(tmp_path / "model.onnx", location="w.bin")
    result = validate_in_subprocess(path, timeout_s=60)
    assert result.error_code == "external_data"
    assert result.error_message == (
        "tensor 'w' (attribute 'value' of node 'Constant') uses external data; upload a self-contained model "
        "(onnx.save(model, path, save_as_external_data=False))"
    )


def test_huge_static_dims_are_refused_with_a_message_not_a_traceback(tmp_path: Path) -> None:
    result = validate_in_subprocess(hostile_onnx.huge_static_input(tmp_path / "model.onnx"), timeout_s=60)
    assert result.ok is False
    assert result.error_code == "input_too_large"
    assert result.error_message == (
        "input 'x' has the static shape [100000, 100000, 100]: 1,000,000,000,000 elements (3,725.3 GiB of "
        "float32), and the check runs the model on a sample of that shape; at most 67,108,864 elements per "
        "input can be checked. Export large axes as dynamic (a dim_param such as 'batch') instead of a fixed size"
    )


def test_peak_memory_is_measured_and_grows_with_the_model(tmp_path: Path) -> None:
    small = validate_in_subprocess(hostile_onnx.matmul(tmp_path / "small.onnx", 16), timeout_s=60)
    big = validate_in_subprocess(hostile_onnx.matmul(tmp_path / "big.onnx", 4096), timeout_s=60)  # 64 MiB weight
    assert small.ok and big.ok, (small, big)
    assert small.report["peak_memory_mb"] > 0
    # The session holds the 64 MiB weight at least once; the tiny model's figure is its overhead.
    assert big.report["peak_memory_mb"] >= 64
    assert big.report["peak_memory_mb"] > small.report["peak_memory_mb"] + 60
    assert big.report["latency_ms_p50"] > 0
