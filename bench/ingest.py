"""Upload→ready wall time per example, against a plain in-process export + check of the same model.

    python bench/ingest.py

For each example in examples/ (MLP as ONNX, CNN as TorchScript, LSTM and the two-input model as
state_dict + source): the platform's time from the upload request to `ready` (sandboxed load,
export, parity at two sizes per dynamic axis, validation), and a plain script's time to do the
export and one onnxruntime check of the same model in a fresh Python process (torch import
included, as a user's own script would pay it). Prints both and the ratio.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "bench"), str(REPO / "platform"), str(REPO)]

from run import Platform  # noqa: E402


def plain(module, name: str, spec: dict, out: Path) -> float:
    """Export + onnxruntime check without the platform (no sandbox, no parity sweep)."""
    import onnxruntime as ort
    import torch

    start = time.perf_counter()
    if spec["format"] == "onnx":
        session = ort.InferenceSession(str(out / spec["artifact"]))
        session.run(None, {"input": np.zeros((2, 784), np.float32)})
        return time.perf_counter() - start
    model = {"cnn": module.build_cnn, "lstm": module.build_lstm, "two_io": module.build_two_io}[name]()
    examples, dynamic = [], {}
    for tensor in spec["inputs"]:
        shape = [d if d is not None else (2 if i == 0 else 5) for i, d in enumerate(tensor["shape"])]
        examples.append(torch.randint(0, 100, shape) if tensor["dtype"] == "int64" else torch.randn(shape))
        dynamic[tensor["name"]] = {i: f"d{i}" for i, d in enumerate(tensor["shape"]) if d is None}
    path = out / f"{name}-plain.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(examples), str(path), input_names=[t["name"] for t in spec["inputs"]],
                          output_names=spec["outputs"], dynamic_axes=dynamic, opset_version=18, dynamo=False)
    session = ort.InferenceSession(str(path))
    session.run(None, {t["name"]: e.numpy() for t, e in zip(spec["inputs"], examples, strict=True)})
    return time.perf_counter() - start


def plain_script(name: str, out: Path) -> float:
    """Wall time of a fresh `python` process doing the plain export + check (torch import included,
    as a user's own script would)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--plain", name, str(out)], check=True)
    return time.perf_counter() - start


def main() -> int:
    import httpx

    if len(sys.argv) == 4 and sys.argv[1] == "--plain":
        loader = importlib.util.spec_from_file_location("ex", REPO / "examples" / "build_examples.py")
        mod = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(mod)
        plain(mod, sys.argv[2], mod.MANIFEST[sys.argv[2]], Path(sys.argv[3]))
        return 0

    spec_loader = importlib.util.spec_from_file_location("ex", REPO / "examples" / "build_examples.py")
    module = importlib.util.module_from_spec(spec_loader)
    spec_loader.loader.exec_module(module)
    with tempfile.TemporaryDirectory(prefix="mp-ingest-") as tmp_name:
        tmp = Path(tmp_name)
        out = tmp / "examples"
        manifest = module.build(out)
        db = f"modelport_ingest_{os.getpid()}"
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f"CREATE DATABASE {db}"], check=True)
        platform = Platform(tmp, db)
        rows = []
        try:
            platform.manage("migrate", "--no-input", "-v0")
            key = platform.manage("createapikey", "bench", "--credits", "1000").strip().splitlines()[-1]
            platform.start()
            client = httpx.Client(base_url=platform.url, headers={"Authorization": f"Bearer {key}"}, timeout=300)
            for name, spec in manifest.items():
                model_name = name.replace("_", "-")
                client.post("/api/v1/models", json={"name": model_name})
                files = {"artifact": (spec["artifact"], (out / spec["artifact"]).read_bytes())}
                if "source" in spec:
                    files["source"] = (spec["source"], (out / spec["source"]).read_bytes())
                data = {"format": spec["format"]}
                data.update({k: spec[k] if isinstance(spec[k], str) else json.dumps(spec[k])
                             for k in ("entrypoint", "init_kwargs", "inputs", "outputs") if k in spec})
                start = time.perf_counter()
                client.post(f"/api/v1/models/bench/{model_name}/versions", data=data, files=files)
                while (status := client.get(f"/api/v1/models/bench/{model_name}/versions/1").json()["status"]) \
                        not in ("ready", "failed"):
                    time.sleep(0.05)
                platform_s = time.perf_counter() - start
                rows.append((name, spec["format"], status, platform_s, plain_script(name, out)))
        finally:
            platform.stop()
            subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f"DROP DATABASE IF EXISTS {db}"],
                           check=False)
    print(f"\n{'example':10} {'format':12} {'status':8} {'upload→ready s':>15} {'plain script s':>15} {'ratio':>7}")
    for name, fmt, status, platform_s, plain_s in rows:
        print(f"{name:10} {fmt:12} {status:8} {platform_s:15.2f} {plain_s:15.2f} {platform_s / plain_s:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
