"""The `modelport` command line, run as a subprocess against the live platform."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.clients.conftest import CLIENT_SRC
from tests.conftest import make_user
from tests.stack import REPO
from workers.demo import mlp_onnx

pytestmark = pytest.mark.integration

LSTM_INPUTS = '[{"name": "tokens", "dtype": "int64", "shape": [null, null]}]'


@pytest.fixture
def cli(live):
    """Runs `python -m modelport_client ARGS` as user `cliuser` (MODELPORT_URL / MODELPORT_API_KEY)."""
    _, key = make_user("cliuser")
    env = {
        **os.environ,
        "MODELPORT_URL": live.base_url,
        "MODELPORT_API_KEY": key,
        "PYTHONPATH": os.pathsep.join([str(CLIENT_SRC), os.environ.get("PYTHONPATH", "")]),
    }

    def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "modelport_client", *args],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    return run


def test_push_onnx_predict_npy_status_and_models(cli, tmp_path: Path):
    path = mlp_onnx(tmp_path / "mlp.onnx", sizes=(8, 16, 3), seed=9)
    done = cli("push", "cliuser/mlp", "--create", "--format", "onnx", "--artifact", str(path))
    assert done.returncode == 0, done.stderr
    assert "created model cliuser/mlp" in done.stderr
    assert "uploading mlp.onnx: 100% " in done.stderr
    assert "version 1: queued" in done.stderr and "version 1: ready" in done.stderr
    assert "cliuser/mlp version 1 is ready" in done.stdout
    assert "input  x: float32 [?, 8]" in done.stdout and "output y: float32 [?, 3]" in done.stdout

    # --create on an existing model pushes a second version without creating anything.
    again = cli("push", "cliuser/mlp", "--create", "--format", "onnx", "--weights", str(path))
    assert again.returncode == 0, again.stderr
    assert "created model" not in again.stderr and "version 2 is ready" in again.stdout

    x = np.random.default_rng(4).standard_normal((5, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out_dir = tmp_path / "out"
    done = cli("predict", "cliuser/mlp", "--input", f"x=@{tmp_path / 'x.npy'}", "--output-dir", str(out_dir))
    assert done.returncode == 0, done.stderr
    got = np.load(out_dir / "y.npy")
    expected = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    assert got.dtype == np.float32 and got.shape == (5, 3)
    assert np.max(np.abs(got - expected)) <= 1e-6
    assert f"y: float32 (5, 3) -> {out_dir / 'y.npy'}" in done.stdout
    assert "(cliuser/mlp version 2): succeeded" in done.stdout
    charged_text = done.stdout.split("credits charged: ")[1].split()[0]
    assert re.fullmatch(r"\d{1,3}(,\d{3})*\.\d{6}", charged_text), charged_text  # as on the dashboard
    charged = float(charged_text.replace(",", ""))
    assert charged > 0

    status = cli("status")
    assert status.returncode == 0, status.stderr
    lines = dict(line.split(":", 1) for line in status.stdout.splitlines())
    assert lines["account"].strip() == "cliuser"
    balance = lines["credits"].strip()
    assert re.fullmatch(r"\d{1,3}(,\d{3})*\.\d{6}", balance), balance  # "49,999.999710", as on the dashboard
    assert float(balance.replace(",", "")) == pytest.approx(50_000 - charged, abs=1e-6)

    models = cli("models")
    assert models.returncode == 0, models.stderr
    header, *rows = models.stdout.splitlines()
    assert header.split() == ["MODEL", "VISIBILITY", "DEFAULT", "DESCRIPTION"]
    assert [row.split()[:3] for row in rows if row.startswith("cliuser/")] == [["cliuser/mlp", "private", "2"]]


def _examples():
    spec = importlib.util.spec_from_file_location("mp_build_examples_cli", REPO / "examples" / "build_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_push_state_dict_with_source_and_predict_int64(cli, tmp_path: Path):
    import torch
    from safetensors.torch import save_file

    examples = _examples()
    lstm = examples.build_lstm()
    save_file(lstm.state_dict(), str(tmp_path / "lstm.safetensors"))
    init_kwargs = json.dumps(examples.MANIFEST["lstm"]["init_kwargs"])
    done = cli(
        "push",
        "cliuser/lstm",
        "--create",
        "--public",
        "--format",
        "state_dict",
        "--weights",
        str(tmp_path / "lstm.safetensors"),
        "--source",
        str(REPO / "examples" / "lstm_model.py"),
        "--entrypoint",
        "SentimentLSTM",
        "--init-kwargs",
        init_kwargs,
        "--inputs",
        LSTM_INPUTS,
        "--outputs",
        '["logits"]',
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert "version 1: converting" in done.stderr or "version 1: validating" in done.stderr
    assert "cliuser/lstm version 1 is ready" in done.stdout
    assert "input  tokens: int64 [?, ?]" in done.stdout and "parity_max_abs_error:" in done.stdout

    tokens = np.random.default_rng(0).integers(0, 1000, size=(3, 11), dtype=np.int64)
    np.save(tmp_path / "tokens.npy", tokens)
    done = cli("predict", "cliuser/lstm", "-i", f"tokens=@{tmp_path / 'tokens.npy'}", "-o", str(tmp_path))
    assert done.returncode == 0, done.stderr
    got = np.load(tmp_path / "logits.npy")
    with torch.no_grad():
        want = lstm(torch.from_numpy(tokens)).numpy()
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    assert "public" in next(row for row in cli("models").stdout.splitlines() if row.startswith("cliuser/lstm"))


def test_failures_print_the_error_and_exit_non_zero(cli, tmp_path: Path):
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not a protobuf \x00\xff" * 20)
    done = cli("push", "cliuser/bogus", "--create", "--format", "onnx", "--artifact", str(bogus))
    assert done.returncode == 1
    assert "version 1: failed" in done.stderr
    assert "error: version 1 of cliuser/bogus failed: not_onnx: " in done.stderr
    assert "is ready" not in done.stdout

    # Refused at upload (400): the problem's status, detail and per-field errors are shown.
    done = cli("push", "cliuser/bogus", "--format", "state_dict", "--weights", str(bogus))
    assert done.returncode == 1
    assert "error: 400 Bad Request: format state_dict needs the source file" in done.stderr
    assert "source: ['required']" in done.stderr

    done = cli("push", "cliuser/missing", "--format", "onnx", "--weights", str(bogus))
    assert done.returncode == 1 and "error: 404 Not Found: model cliuser/missing not found" in done.stderr

    np.save(tmp_path / "x.npy", np.zeros((1, 8), np.float32))
    done = cli("predict", "cliuser/bogus", "--input", f"x=@{tmp_path / 'x.npy'}", "-o", str(tmp_path))
    assert done.returncode == 1 and "error: 503 " in done.stderr
    assert not (tmp_path / "y.npy").exists()

    done = cli("predict", "cliuser/bogus", "--input", "x")
    assert done.returncode == 2 and "expected NAME=@FILE.npy" in done.stderr
    done = cli("push", "cliuser/bogus", "--format", "onnx", "--weights", str(bogus), "--inputs", "{")
    assert done.returncode == 2 and "not valid JSON" in done.stderr
