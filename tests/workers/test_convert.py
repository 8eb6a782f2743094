"""Conversion of state_dict / TorchScript uploads, and hostile uploads ending failed and contained."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from safetensors.torch import load_file, save_file

from tests.workers.conftest import processes_mentioning
from workers.convert import ConversionResult, convert_model
from workers.external_data import ExternalDataError, check_external_data
from workers.sandbox import SandboxLimits

pytestmark = pytest.mark.usefixtures("isolated")

LIMITS = SandboxLimits(wall_seconds=120, cpu_seconds=120)
XY = [{"name": "x", "dtype": "float32", "shape": [None, 4]}]
LINEAR_SOURCE = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)
"""


def convert_example(
    name: str, manifest: dict[str, Any], examples_dir: Path, work_dir: Path, **overrides: Any
) -> ConversionResult:
    spec = manifest[name]
    kwargs: dict[str, Any] = {
        "fmt": spec["format"],
        "artifact": examples_dir / spec["artifact"],
        "source": examples_dir / spec["source"] if "source" in spec else None,
        "entrypoint": spec.get("entrypoint"),
        "init_kwargs": spec.get("init_kwargs", {}),
        "inputs": spec["inputs"],
        "work_dir": work_dir,
        "limits": LIMITS,
        "output_names": spec.get("outputs"),
    }
    kwargs.update(overrides)
    return convert_model(**kwargs)


def convert_source(
    tmp_path: Path, source: str, *, limits: SandboxLimits = LIMITS, weights: Path | None = None
) -> ConversionResult:
    """Convert a tiny Linear(4, 2) state_dict with the given (possibly hostile) source."""
    source_path = tmp_path / "model.py"
    source_path.write_text(textwrap.dedent(source))
    if weights is None:
        weights = tmp_path / "weights.safetensors"
        torch.manual_seed(0)
        save_file({f"fc.{k}": v for k, v in torch.nn.Linear(4, 2).state_dict().items()}, str(weights))
    return convert_model(
        fmt="state_dict",
        artifact=weights,
        source=source_path,
        entrypoint="Net",
        init_kwargs={},
        inputs=XY,
        work_dir=tmp_path / "work",
        limits=limits,
    )


# ------------------------------------------------------------------------------------------
# the examples


@pytest.mark.parametrize(
    ("name", "signature"),
    [
        (
            "cnn",
            {
                "inputs": [{"name": "image", "dtype": "float32", "shape": [None, 3, 32, 32]}],
                "outputs": [{"name": "logits", "dtype": "float32", "shape": [None, 10]}],
            },
        ),
        (
            "lstm",
            {
                "inputs": [{"name": "tokens", "dtype": "int64", "shape": [None, None]}],
                "outputs": [{"name": "logits", "dtype": "float32", "shape": [None, 2]}],
            },
        ),
        (
            "two_io",
            {
                "inputs": [
                    {"name": "features", "dtype": "float32", "shape": [None, 8]},
                    {"name": "context", "dtype": "float32", "shape": [None, 4]},
                ],
                "outputs": [
                    {"name": "score", "dtype": "float32", "shape": [None, 1]},
                    {"name": "embedding", "dtype": "float32", "shape": [None, 16]},
                ],
            },
        ),
    ],
)
def test_examples_convert_with_parity(
    name: str, signature: dict[str, Any], manifest: dict[str, Any], examples_dir: Path, tmp_path: Path
) -> None:
    result = convert_example(name, manifest, examples_dir, tmp_path / "work")
    assert result.ok, (result.error_code, result.error_message, result.log)
    assert result.error_code is None
    assert result.signature == signature
    assert result.onnx_path == tmp_path / "work" / "model.onnx"
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["model.onnx"]  # scratch removed
    report = result.report
    assert 0 <= report["parity_max_abs_error"] < 1e-4
    assert 0 <= report["parity_max_rel_error"] < 1e-4
    assert report["latency_ms_p50"] > 0
    assert "peak_memory_mb" not in report  # the validator measures it, in a fresh process
    assert "state_dict_prefix_stripped" not in report  # the keys were used as they are
    assert report["conversion_peak_memory_mb"] > 0
    assert report["opset"] == 18
    assert report["exporter"] in ("dynamo", "legacy")
    assert report["isolation"] == "namespaces"
    expected_params = {"cnn": 5514, "lstm": 57218, "two_io": 241}[name]
    assert report["parameter_count"] == expected_params
    model = onnx.load(str(result.onnx_path))
    assert {op.domain for op in model.opset_import} <= {"", "ai.onnx"}
    check_external_data(result.onnx_path)


def test_lstm_matches_eager_at_three_sequence_lengths(
    manifest: dict[str, Any], examples_dir: Path, build_examples: Any, tmp_path: Path
) -> None:
    result = convert_example("lstm", manifest, examples_dir, tmp_path / "work")
    assert result.ok, result.error_message
    model = build_examples.build_lstm()
    model.load_state_dict(load_file(str(examples_dir / "lstm.safetensors")))
    session = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(7)
    for batch, length in [(1, 3), (4, 17), (2, 64)]:
        tokens = torch.randint(0, 1000, (batch, length), generator=generator)
        with torch.no_grad():
            expected = model(tokens).numpy()
        (got,) = session.run(["logits"], {"tokens": tokens.numpy()})
        assert got.shape == (batch, 2)
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)


def test_mlp_onnx_example_is_self_contained(manifest: dict[str, Any], examples_dir: Path) -> None:
    path = examples_dir / manifest["mlp"]["artifact"]
    check_external_data(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("input", ["batch", 784])]
    (logits,) = session.run(None, {"input": np.zeros((3, 784), dtype=np.float32)})
    assert logits.shape == (3, 10)


# ------------------------------------------------------------------------------------------
# user errors


def test_renamed_layer_names_both_keys(manifest: dict[str, Any], examples_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "lstm_model.py"
    source.write_text((examples_dir / "lstm_model.py").read_text().replace("self.classifier", "self.head"))
    result = convert_example("lstm", manifest, examples_dir, tmp_path / "work", source=source)
    assert not result.ok
    assert result.error_code == "state_dict_mismatch"
    assert result.error_message == (
        "state_dict does not match the model: "
        "missing keys (in the model, not in the weights file): head.weight [2, 64], head.bias [2]; "
        # (safetensors files keep their keys sorted)
        "unexpected keys (in the weights file, not in the model): classifier.bias [2], classifier.weight [2, 64]"
    )
    assert result.onnx_path is None and not (tmp_path / "work" / "model.onnx").exists()


def test_shape_mismatch_names_both_shapes(manifest: dict[str, Any], examples_dir: Path, tmp_path: Path) -> None:
    init_kwargs = {**manifest["lstm"]["init_kwargs"], "num_classes": 3}
    result = convert_example("lstm", manifest, examples_dir, tmp_path / "work", init_kwargs=init_kwargs)
    assert result.error_code == "state_dict_mismatch"
    assert result.error_message == (
        "state_dict does not match the model: shape mismatch: "
        "classifier.weight expected [3, 64], got [2, 64], classifier.bias expected [3], got [2]"
    )


def test_missing_entrypoint_lists_candidates(tmp_path: Path) -> None:
    result = convert_source(tmp_path, LINEAR_SOURCE.replace("class Net", "class Network"))
    assert result.error_code == "entrypoint_not_found"
    assert result.error_message == "entrypoint 'Net' is not defined in the source file; it defines: Network"


def test_unsupported_operator_is_named(tmp_path: Path) -> None:
    result = convert_source(
        tmp_path,
        """
        import torch
        from torch import nn

        @torch.library.custom_op("modelport_test::wobble", mutates_args=())
        def wobble(x: torch.Tensor) -> torch.Tensor:
            return x * 2

        @wobble.register_fake
        def _(x):
            return torch.empty_like(x)

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 2)

            def forward(self, x):
                return wobble(self.fc(x))
        """,
    )
    assert result.error_code == "export_failed"
    assert result.error_message is not None
    # One sentence of advice first, then what each exporter said.
    advice, said = result.error_message.split(" What the exporters said: ", 1)
    assert advice == (
        "The model could not be exported to ONNX because it uses modelport_test.wobble, which has no ONNX "
        "form: compute that part with standard torch operations, or outside the model."
    )
    assert "unsupported operator modelport_test::wobble" in said


def test_shape_baked_into_the_graph_fails_parity(tmp_path: Path) -> None:
    # Python-level branching on the batch size: tracing bakes in the branch of the example.
    result = convert_source(
        tmp_path,
        LINEAR_SOURCE.replace("return self.fc(x)", "return self.fc(x) * (2.0 if x.shape[0] > 2 else 1.0)"),
    )
    assert result.error_code == "parity"
    assert result.error_message is not None
    assert result.error_message.startswith("the converted model does not match the original: ")
    assert "differs from PyTorch by up to" in result.error_message
    assert " input sizes" in result.error_message


def test_corrupt_torchscript_is_rejected(tmp_path: Path) -> None:
    artifact = tmp_path / "model.pt"
    artifact.write_bytes(b"PK\x03\x04 not really a zip")
    result = convert_model(
        fmt="torchscript",
        artifact=artifact,
        source=None,
        entrypoint=None,
        init_kwargs={},
        inputs=XY,
        work_dir=tmp_path / "work",
        limits=LIMITS,
    )
    assert result.error_code == "torchscript_rejected"
    assert result.error_message is not None and result.error_message.startswith("TorchScript archive rejected: ")


def test_invalid_inputs_are_refused_before_running_anything(tmp_path: Path) -> None:
    result = convert_model(
        fmt="torchscript",
        artifact=tmp_path / "missing.pt",
        source=None,
        entrypoint=None,
        init_kwargs={},
        inputs=[{"name": "x", "dtype": "complex64", "shape": [None]}],
        work_dir=tmp_path / "work",
    )
    assert result.error_code == "invalid_artifact"
    artifact = tmp_path / "model.pt"
    artifact.write_bytes(b"x")
    result = convert_model(
        fmt="torchscript",
        artifact=artifact,
        source=None,
        entrypoint=None,
        init_kwargs={},
        inputs=[{"name": "x", "dtype": "complex64", "shape": [None]}],
        work_dir=tmp_path / "work",
    )
    assert result.error_code == "invalid_inputs"
    assert result.error_message == (
        "inputs[0].dtype 'complex64' is not one of "
        "['bool', 'float16', 'float32', 'float64', 'int16', 'int32', 'int64', 'int8', 'uint8']"
    )
    assert not (tmp_path / "work").exists()


def _linear_module(tmp_path: Path) -> torch.nn.Module:
    """An instance of LINEAR_SOURCE's Net, importable by name so torch.save(model) can pickle it."""
    import importlib.util
    import sys

    path = tmp_path / "mp_linear_net.py"
    path.write_text(LINEAR_SOURCE)
    spec = importlib.util.spec_from_file_location("mp_linear_net", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mp_linear_net"] = module
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    return module.Net()


def _torchscript_upload(artifact: Path, tmp_path: Path) -> ConversionResult:
    return convert_model(
        fmt="torchscript", artifact=artifact, source=None, entrypoint=None, init_kwargs={}, inputs=XY,
        work_dir=tmp_path / "work", limits=LIMITS,
    )


def test_whole_pickled_module_says_save_the_state_dict(tmp_path: Path) -> None:
    torch.save(_linear_module(tmp_path), tmp_path / "whole.pt")
    result = convert_source(tmp_path, LINEAR_SOURCE, weights=tmp_path / "whole.pt")
    assert result.error_code == "weights_rejected"
    assert result.error_message == (
        "weights file rejected: this file pickles a whole module; save `model.state_dict()` instead "
        "(torch.save(model.state_dict(), 'weights.pt')) and upload it with format=state_dict, the source and "
        "the entrypoint"
    )
    result = _torchscript_upload(tmp_path / "whole.pt", tmp_path)
    assert result.error_code == "torchscript_rejected"
    assert result.error_message is not None
    assert result.error_message.startswith("TorchScript archive rejected: this file pickles a whole module")


def test_state_dict_sent_as_torchscript_says_use_format_state_dict(tmp_path: Path) -> None:
    torch.save(_linear_module(tmp_path).state_dict(), tmp_path / "weights.pt")
    result = _torchscript_upload(tmp_path / "weights.pt", tmp_path)
    assert result.error_code == "torchscript_rejected"
    assert result.error_message == (
        "TorchScript archive rejected: this is a state_dict, not a TorchScript archive; use format=state_dict "
        "(with the model's source file and entrypoint), or upload torch.jit.save(torch.jit.script(model)) as "
        "torchscript"
    )


def test_data_parallel_prefix_is_stripped_and_reported(tmp_path: Path) -> None:
    net = _linear_module(tmp_path)
    weights = tmp_path / "dp.safetensors"
    save_file({f"module.{k}": v for k, v in net.state_dict().items()}, str(weights))
    result = convert_source(tmp_path, LINEAR_SOURCE, weights=weights)
    assert result.ok, result.error_message
    assert result.report["state_dict_prefix_stripped"] == "module."
    x = np.random.default_rng(3).standard_normal((3, 4)).astype(np.float32)
    session = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {"x": x})[0], net(torch.from_numpy(x)).numpy(), atol=1e-6)


def test_syntax_error_names_the_uploaded_file_and_shows_the_line(tmp_path: Path) -> None:
    source = tmp_path / "model.py"
    source.write_text(LINEAR_SOURCE.replace("def forward(self, x):", "def forward(self x):"))
    weights = tmp_path / "weights.safetensors"
    save_file({f"fc.{k}": v for k, v in torch.nn.Linear(4, 2).state_dict().items()}, str(weights))
    result = convert_model(
        fmt="state_dict", artifact=weights, source=source, entrypoint="Net", init_kwargs={}, inputs=XY,
        work_dir=tmp_path / "work", limits=LIMITS, source_name="my_network.py",
    )
    assert result.error_code == "source_error"
    message = result.error_message or ""
    head, line, caret = message.split("\n")
    assert head.startswith("my_network.py has a syntax error at line 10: ")
    assert line == "    def forward(self x):"
    assert caret.endswith("^") and caret.strip() == "^"
    assert "model_source" not in message


def test_external_data_threshold_keeps_tensors_beside_the_model(tmp_path: Path) -> None:
    result = convert_model(
        fmt="state_dict", artifact=_linear_weights(tmp_path), source=_write(tmp_path / "model.py", LINEAR_SOURCE),
        entrypoint="Net", init_kwargs={}, inputs=XY, work_dir=tmp_path / "work", limits=LIMITS,
        external_data_over_bytes=16,
    )
    assert result.ok, result.error_message
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["model.onnx", "model.onnx.data"]
    model = onnx.load(str(result.onnx_path), load_external_data=False)
    assert {t.name for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL} == {
        "fc.weight", "fc.bias"}
    check_external_data(result.onnx_path)
    x = np.ones((2, 4), dtype=np.float32)
    (y,) = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert y.shape == (2, 2)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _linear_weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    weights = tmp_path / "weights.safetensors"
    save_file({f"fc.{k}": v for k, v in torch.nn.Linear(4, 2).state_dict().items()}, str(weights))
    return weights


# ------------------------------------------------------------------------------------------
# hostile uploads


class _ShellPayload:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


class _PrintPayload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("PRINT-PAYLOAD-RAN",))


def test_pickle_that_runs_a_shell_command_is_rejected(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    weights = tmp_path / "evil.pt"
    torch.save({"fc.weight": _ShellPayload(f"touch {marker}; echo SHELL-PAYLOAD-RAN")}, str(weights))
    result = convert_source(tmp_path, LINEAR_SOURCE, weights=weights)
    assert result.error_code == "weights_rejected"
    assert result.error_message is not None
    assert result.error_message == (
        "weights file rejected: Trying to load unsupported GLOBAL posix.system whose module posix is blocked."
    )
    assert not marker.exists()
    assert "SHELL-PAYLOAD-RAN" not in result.log


def test_pickle_with_a_disallowed_global_gets_no_fallback(tmp_path: Path) -> None:
    weights = tmp_path / "evil.pth"
    torch.save({"fc.weight": _PrintPayload()}, str(weights))
    result = convert_source(tmp_path, LINEAR_SOURCE, weights=weights)
    assert result.error_code == "weights_rejected"
    assert result.error_message is not None
    assert result.error_message == (
        "weights file rejected: Unsupported global: GLOBAL print was not an allowed global by default."
    )
    assert "PRINT-PAYLOAD-RAN" not in result.log


def test_source_cannot_connect_to_a_loopback_port(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = convert_source(
            tmp_path, f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
        )
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()
    assert result.error_code == "source_error"
    assert result.error_message == (
        "the source file failed to import: OSError: [Errno 101] Network is unreachable (line 2 of the source)"
    )


def test_source_cannot_reach_the_hosts_postgresql_socket(tmp_path: Path) -> None:
    pg_socket = "/var/run/postgresql/.s.PGSQL.5432"
    assert stat.S_ISSOCK(os.stat(pg_socket).st_mode)  # the host has it: the probe means something
    result = convert_source(
        tmp_path,
        f"""
        import os, socket
        seen = os.path.exists({pg_socket!r})
        try:
            socket.socket(socket.AF_UNIX).connect({pg_socket!r})
            outcome = "connected"
        except OSError as exc:
            outcome = exc.strerror
        raise RuntimeError(f"PROBE seen={{seen}} connect={{outcome}}")
        """,
    )
    assert result.error_code == "source_error"
    assert result.error_message == (
        "the source file failed to import: RuntimeError: PROBE seen=False connect=Permission denied (line 9 of the source)"
    )


def test_source_cannot_see_the_workers_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_KEY", "django-insecure-s3cret")
    monkeypatch.setenv("DATABASE_URL", "postgres://modelport:hunter2@127.0.0.1/modelport")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    result = convert_source(tmp_path, "import os\nraise RuntimeError('ENV ' + repr(sorted(os.environ.items())))\n")
    assert result.error_code == "source_error"
    message = result.error_message or ""
    assert "('PATH', '/usr/local/bin:/usr/bin:/bin')" in message
    for leaked in ("SECRET_KEY", "s3cret", "DATABASE_URL", "hunter2", "REDIS_URL", "6379"):
        assert leaked not in message
        assert leaked not in result.log


def test_fork_bomb_in_source_hits_the_process_limit(tmp_path: Path) -> None:
    started = time.monotonic()
    result = convert_source(
        tmp_path,
        """
        import os, time
        for _ in range(10_000):
            if os.fork() == 0:
                time.sleep(120)
                os._exit(0)
        """,
    )
    assert time.monotonic() - started < 30
    assert result.error_code == "process_limit"
    assert result.error_message is not None
    assert result.error_message.startswith("process limit of 64 processes/threads exceeded")
    assert result.is_limit_error
    assert processes_mentioning(str(tmp_path)) == []


def test_huge_allocation_hits_the_memory_limit(tmp_path: Path) -> None:
    result = convert_source(tmp_path, "import torch\nBIG = torch.empty(25 * 2**30, dtype=torch.float32)  # 100 GB\n")
    assert result.error_code == "memory_limit"
    assert result.error_message is not None
    assert result.error_message.startswith("memory limit of 4096 MiB exceeded: ")


def test_infinite_loop_hits_the_time_limit(tmp_path: Path) -> None:
    started = time.monotonic()
    result = convert_source(tmp_path, "while True:\n    pass\n", limits=SandboxLimits(wall_seconds=8, cpu_seconds=60))
    assert 8 <= time.monotonic() - started < 15
    assert result.error_code == "time_limit"
    assert result.error_message == "time limit of 8 s exceeded"
    assert processes_mentioning(str(tmp_path)) == []


def test_source_cannot_write_outside_its_scratch_dir(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o755)
    target = outside / "pwned.txt"
    result = convert_source(
        tmp_path, f"open('inside.txt', 'w').write('fine')\nopen({str(target)!r}, 'w').write('pwned')\n"
    )
    assert result.error_code == "source_error"
    # The job's root holds none of the host's directories but its own: the path does not exist.
    assert result.error_message == (
        f"the source file failed to import: FileNotFoundError: [Errno 2] No such file or directory: {str(target)!r} "
        "(line 2 of the source)"
    )
    assert not target.exists()
    assert list(outside.iterdir()) == []


# ------------------------------------------------------------------------------------------
# ONNX external data


def _external_model(location: str, directory: Path) -> Path:
    tensor = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "8")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [tensor], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path = directory / "model.onnx"
    onnx.save(model, str(path))
    return path


def test_external_data_inside_the_upload_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(np.array([1.0, 2.0], dtype=np.float32).tobytes())
    path = _external_model("weights.bin", tmp_path)
    check_external_data(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.zeros(2, dtype=np.float32)})
    assert y.tolist() == [1.0, 2.0]


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("../../etc/passwd", "'..' is not allowed in external data paths"),
        ("sub/../../passwd", "'..' is not allowed in external data paths"),
        ("/etc/passwd", "absolute paths are not allowed"),
        ("C:\\Windows\\win.ini", "absolute paths are not allowed"),
        ("link.bin", "symbolic links are not allowed"),
        ("missing.bin", "the file was not uploaded"),
        ("short.bin", "offset/length point past the end of the file"),
    ],
)
def test_external_data_escapes_are_refused(tmp_path: Path, location: str, reason: str) -> None:
    (tmp_path / "link.bin").symlink_to("/etc/passwd")
    (tmp_path / "short.bin").write_bytes(b"1234")
    path = _external_model(location, tmp_path)
    with pytest.raises(ExternalDataError) as excinfo:
        check_external_data(path)
    assert str(excinfo.value) == f"tensor 'w' (initializer) stores its data in external file {location!r}: {reason}"


def test_symlinked_directory_on_the_way_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "w.bin").write_bytes(b"\0" * 8)
    upload = tmp_path / "upload"
    upload.mkdir()
    (upload / "sub").symlink_to(outside)
    path = _external_model("sub/w.bin", upload)
    with pytest.raises(ExternalDataError, match="symbolic links are not allowed"):
        check_external_data(path)


def test_external_data_in_constant_attributes_is_checked(tmp_path: Path) -> None:
    value = TensorProto(name="c", data_type=TensorProto.FLOAT, dims=[2])
    value.data_location = TensorProto.EXTERNAL
    entry = value.external_data.add()
    entry.key, entry.value = "location", "/etc/shadow"
    node = helper.make_node("Constant", [], ["y"], value=value)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    model = helper.make_model(helper.make_graph([node], "g", [], [y]), opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ExternalDataError, match="absolute paths are not allowed"):
        check_external_data(path, onnx.load(str(path), load_external_data=False))


def test_custom_operator_domain_is_refused(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example.ops")
    model = helper.make_model(
        helper.make_graph([node], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example.ops", 1)],
    )
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ExternalDataError) as excinfo:
        check_external_data(path)
    assert str(excinfo.value) == (
        "custom operator com.example.ops::Frobnicate is not supported; only the standard ONNX operator "
        "domains (ai.onnx, ai.onnx.ml) can be served"
    )


def test_conversion_output_leaves_nothing_in_scratch(
    manifest: dict[str, Any], examples_dir: Path, tmp_path: Path
) -> None:
    # Reusing a work dir replaces a stale scratch dir instead of converting next to old files.
    stale = tmp_path / "work" / "scratch"
    stale.mkdir(parents=True)
    (stale / "model.onnx").write_bytes(b"stale")
    result = convert_example("two_io", manifest, examples_dir, tmp_path / "work")
    assert result.ok, result.error_message
    assert not stale.exists()
    shutil.rmtree(tmp_path / "work")
