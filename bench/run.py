"""Benchmarks for the inference path, as ratios against baselines measured in the same run.

    python bench/run.py [--duration 8] [--pairs 3]

Runs, on this machine and loopback only:
1. onnxruntime in-process (MLP 784-256-10, batch 1) — the floor;
2. a minimal direct HTTP server around the same session (bench/direct_server.py), and, when
   BENCH_BENTOML_PYTHON names a Python with bentoml, onnxruntime and numpy (a virtualenv of its
   own), BentoML serving the same model (bench/bentoml_service.py) at concurrency 1 and 32 —
   the peer the serving goals are stated against. Its runs are paired with the platform's
   (BentoML, then the platform, at each concurrency of each metering-on round): this machine's
   speed drifts by tens of percent over minutes, and a peer measured only once, minutes before
   the platform, compared the drift as much as the two servers;
3. the full platform path (HTTP, API key, admission + hold, Redis data plane, serving worker,
   onnxruntime, settlement) with the same model and its default settings (dynamic batching on,
   max_batch_size 8), at concurrency 1 and 32; one web process, or BENCH_WEB_WORKERS of them
   (uvicorn --workers; as that many web containers would be);
4. the same with metering switched off (bench-only setting) — metering's share (on/off runs
   alternate --pairs times (default 3); each figure is the mean of its runs);
5. dynamic batching at concurrency 32 on two CNNs for 3x32x32 images sent as tritonclient
   sends them (Open Inference Protocol with binary tensors): the examples' small CNN and a
   CIFAR-size CNN with a dense head (see cnn_onnx); max_batch_size 16 vs 1 (alternating
   --pairs times, means), beside each CNN in-process at batch 16 vs 1 (what onnxruntime itself
   gains from batching here) and that saving's share of the CPU an unbatched call costs in
   all processes (while every core is busy, throughput is the inverse of that CPU). The
   batching goal (>= 1.2x) is read on the CIFAR-size CNN, the small image classifier a user
   deploys; the examples' CNN (5 k parameters, a test fixture) spends ~1-2 % of a call's CPU
   in onnxruntime here, so no batching can gain it 1.2x (docs/ARCHITECTURE.md);
6. where the CPU goes during the c=32 runs (web, PostgreSQL, serving worker, Redis, wrk),
   from /proc: the cores each part used and its CPU milliseconds per call.
Load comes from wrk (Debian package) with bounded duration. Everything started is stopped by
process group. Needs PostgreSQL and Redis on 127.0.0.1 (make services).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import redis

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "platform"), str(REPO)]

from tests import stack as stk  # noqa: E402
from workers.demo import mlp_onnx  # noqa: E402

WRK_LUA = """
wrk.method = "POST"
wrk.body = io.open("{body}"):read("*a")
wrk.headers["Content-Type"] = "application/json"
{headers}
"""


def wrk(url: str, body: dict | bytes, *, connections: int, duration: int,
        headers: dict[str, str] | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        body_path = Path(tmp) / "body"
        body_path.write_bytes(body if isinstance(body, bytes) else json.dumps(body).encode())
        lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items())
        script = Path(tmp) / "post.lua"
        script.write_text(WRK_LUA.format(body=body_path, headers=lines))
        threads = 1 if connections == 1 else 2
        out = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--latency",
                              "-s", str(script), url], capture_output=True, text=True, timeout=duration + 60,
                             check=True).stdout
    def ms(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"p50_ms": ms("50"), "p99_ms": ms("99"), "rps": rps, "non2xx": int(errors.group(1)) if errors else 0}


def cpu_session(model: Path) -> Any:
    """An onnxruntime CPU session with one intra-op thread, as the serving worker runs it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def inprocess(model: Path, x: np.ndarray, n: int = 5000) -> float:
    session = cpu_session(model)
    for _ in range(200):
        session.run(None, {"x": x})
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        session.run(None, {"x": x})
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def inprocess_batch_gain(model: Path, *, batch: int = 16, n: int = 300) -> dict[str, float]:
    """In-process per-sample time at batch 1 over that at `batch` (1 session thread): the most
    dynamic batching can gain from onnxruntime itself on this CPU (`gain`), and the milliseconds
    per sample it saves (`saved_ms`)."""
    session = cpu_session(model)
    rng = np.random.default_rng(2)
    per_sample = {}
    for size in (1, batch):
        x = rng.standard_normal((size, 3, 32, 32)).astype(np.float32)
        for _ in range(20):
            session.run(None, {"x": x})
        runs = max(n // size, 20)
        t0 = time.perf_counter()
        for _ in range(runs):
            session.run(None, {"x": x})
        per_sample[size] = (time.perf_counter() - t0) / (runs * size)
    return {"gain": per_sample[1] / per_sample[batch], "saved_ms": (per_sample[1] - per_sample[batch]) * 1000}


def bentoml_peer(python: str, model: Path, body: dict) -> tuple[stk.Proc, str]:
    """The same model behind BentoML (bench/bentoml_service.py), run by `python` (a separate
    virtualenv with bentoml, onnxruntime and numpy: BentoML pins its own web stack), warmed up:
    (its process, its predict URL)."""
    import httpx

    port = stk.free_port()
    env = {**os.environ, "BENCH_MODEL": str(model), "BENTOML_DO_NOT_TRACK": "true"}
    proc = stk.start("bench-bentoml", [python, "-m", "bentoml", "serve", "bentoml_service:MLP", "--working-dir",
                                       str(REPO / "bench"), "--host", "127.0.0.1", "--port", str(port)], env)
    try:
        stk.wait_http(f"http://127.0.0.1:{port}/readyz", proc)
        url = f"http://127.0.0.1:{port}/predict"
        for _ in range(50):
            httpx.post(url, json=body, timeout=30)
    except BaseException:
        proc.stop()
        raise
    return proc, url


def cpu_by_process(groups: dict[int, str]) -> dict[int, tuple[str, float]]:
    """{pid: (part, CPU seconds used so far)} for the processes of each process group in `groups`
    (by pgid) and PostgreSQL's and Redis's server processes; read from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        label = groups.get(int(fields[2]))
        if label is None:
            label = "postgres" if comm.startswith("postgres") else "redis" if comm.startswith("redis") else None
        if label is not None:
            out[int(entry)] = (label, (int(fields[11]) + int(fields[12])) / ticks)
    return out


def cpu_used(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds each part used between two cpu_by_process readings. Per process, so that one
    that exited in between (a PostgreSQL backend whose connection closed) does not subtract its
    whole past from the part; what it used before exiting is not counted (an undercount)."""
    out: dict[str, float] = {}
    for pid, (label, seconds) in after.items():
        out[label] = out.get(label, 0.0) + seconds - before.get(pid, (label, 0.0))[1]
    return out


CPU_NAMES = ("web", "postgres", "serve", "redis", "wrk")
CNNS = {"cnn": "CNN", "cnn-dense": "dense-head CNN"}  # bench model name -> label


def wrk_with_cpu(platform: Platform, url: str, body: dict | bytes, *, duration: int, headers: dict[str, str]) -> dict:
    """wrk at concurrency 32, plus the cores each part used meanwhile (`cpu_<name>`)."""
    groups = {proc.popen.pid: name for proc, name in zip(platform.procs, ("web", "serve", "convert"), strict=True)}
    before, started, children = cpu_by_process(groups), time.monotonic(), os.times()
    result = wrk(url, body, connections=32, duration=duration, headers=headers)
    after, elapsed, done = cpu_by_process(groups), time.monotonic() - started, os.times()
    used = cpu_used(before, after)
    # wrk has exited by now: its CPU is in this process's reaped-children times.
    used["wrk"] = done.children_user + done.children_system - children.children_user - children.children_system
    for name in CPU_NAMES:
        result[f"cpu_{name}"] = used.get(name, 0.0) / elapsed
    return result


def cnn_onnx(path: Path, *, dense_head: bool = False) -> Path:
    """The examples' small CNN (two convolutions, global pooling, 5 k parameters) or, with
    `dense_head`, a CIFAR-size CNN whose classifier is a 4096-1024-10 dense head (4.3 M
    parameters, the shape of classic image classifiers: at batch 1 its dense layers are
    memory-bound matrix-vector products, which batching turns into matrix products)."""
    import importlib.util

    import torch
    from torch import nn

    torch.manual_seed(0)
    if dense_head:
        model = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 8 * 8, 1024), nn.ReLU(), nn.Linear(1024, 10)).eval()
    else:
        spec = importlib.util.spec_from_file_location("ex", REPO / "examples" / "build_examples.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        model = module.build_cnn()
    torch.onnx.export(model, (torch.randn(2, 3, 32, 32),), str(path), input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=18,
                      dynamo=False)
    return path


def v2_binary(image: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """An Open Inference Protocol request with the binary tensor extension (what tritonclient
    sends for images): JSON header, then the raw FP32 bytes; the output comes back binary too."""
    header = json.dumps({
        "inputs": [{"name": "x", "shape": list(image.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": image.nbytes}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}).encode()
    return header + image.tobytes(), {"Inference-Header-Content-Length": str(len(header)),
                                      "Content-Type": "application/octet-stream"}


class Platform:
    def __init__(self, tmp: Path, db: str) -> None:
        self.tmp = tmp
        self.prefix = f"mpbench{uuid.uuid4().hex[:6]}"
        self.env = stk.process_env(
            DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{db}", REDIS_URL="redis://127.0.0.1:6379/11",
            MODELPORT_REDIS_PREFIX=self.prefix, MODELPORT_ARTIFACT_ROOT=str(tmp / "artifacts"),
            MODELPORT_RATE_LIMIT="1000000/second", MODELPORT_LOG_LEVEL="WARNING",
            # The bench uploads its five versions at once: past the per-account upload throttle.
            MODELPORT_UPLOAD_MAX_IN_PROGRESS="16", MODELPORT_UPLOAD_RATE_LIMIT="100/minute",
        )
        self.procs: list[stk.Proc] = []
        self.port = stk.free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def manage(self, *args: str) -> str:
        return subprocess.run([sys.executable, "manage.py", *args], cwd=REPO, env=self.env, check=True,
                              capture_output=True, text=True).stdout

    def start(self, **env: str) -> None:
        full = {**self.env, **env}
        web = stk.start("bench-web", [sys.executable, "-m", "uvicorn", "modelport.config.asgi:application",
                                      "--host", "127.0.0.1", "--port", str(self.port), "--no-access-log",
                                      "--log-level", "warning", "--workers", os.environ.get("BENCH_WEB_WORKERS", "1")],
                        full)
        serve = stk.start("bench-serve", stk.celery_argv("bench-serve", [f"{self.prefix}.control"], serve=True), full)
        convert = stk.start("bench-convert", stk.celery_argv("bench-convert", [f"{self.prefix}.convert"]), full)
        self.procs = [web, serve, convert]
        stk.wait_http(f"{self.url}/healthz", web)

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--pairs", type=int, default=3, help="metering on/off alternations")
    args = parser.parse_args()
    d = args.duration
    import httpx

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="mp-bench-") as tmp_name:
        tmp = Path(tmp_name)
        mlp = mlp_onnx(tmp / "mlp.onnx")
        x = np.random.default_rng(0).standard_normal((1, 784)).astype(np.float32)
        body = {"input": {"x": x.tolist()}}
        results["onnxruntime in-process"] = {"p50_ms": inprocess(mlp, x)}

        port = stk.free_port()
        direct = stk.start("bench-direct", [sys.executable, str(REPO / "bench" / "direct_server.py"), str(mlp),
                                            str(port)], stk.process_env())
        try:
            time.sleep(2)
            results["direct HTTP c=1"] = wrk(f"http://127.0.0.1:{port}/", body, connections=1, duration=d)
            results["direct HTTP c=32"] = wrk(f"http://127.0.0.1:{port}/", body, connections=32, duration=d)
        finally:
            direct.stop()
        bento_python = os.environ.get("BENCH_BENTOML_PYTHON")
        bento, bento_url, bento_body = None, "", {"x": x.tolist()}

        db = f"modelport_bench_{os.getpid()}"
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f"CREATE DATABASE {db}"], check=True)
        platform = Platform(tmp, db)
        try:
            if bento_python:
                bento, bento_url = bentoml_peer(bento_python, mlp, bento_body)
            platform.manage("migrate", "--no-input", "-v0")
            key = platform.manage("createapikey", "bench", "--credits", "100000000").strip().splitlines()[-1]
            auth = {"Authorization": f"Bearer {key}"}
            platform.start()
            client = httpx.Client(base_url=platform.url, headers=auth, timeout=120)
            client.post("/api/v1/models", json={"name": "mlp"})
            for name in CNNS:
                client.post("/api/v1/models", json={"name": name})
            uploads = [("mlp", mlp)]
            cnn_files = {name: cnn_onnx(tmp / f"{name}.onnx", dense_head=name == "cnn-dense") for name in CNNS}
            uploads += [(name, path) for name, path in cnn_files.items() for _ in range(2)]  # v1 unbatched, v2 batched
            for name, path in uploads:
                resp = client.post(f"/api/v1/models/bench/{name}/versions", data={"format": "onnx"},
                                   files={"artifact": (path.name, path.read_bytes())})
                if resp.status_code != 202:
                    raise SystemExit(f"bench: uploading {name} answered {resp.status_code}: {resp.text[:300]}")
            deadline = time.monotonic() + 600
            for path in ["mlp/versions/1"] + [f"{n}/versions/{v}" for n in CNNS for v in (1, 2)]:
                while client.get(f"/api/v1/models/bench/{path}").json().get("status") not in ("ready", "failed"):
                    if time.monotonic() > deadline:
                        raise SystemExit(f"bench: {path} was not ready after 600 s")
                    time.sleep(0.2)
            subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-qc",
                            "UPDATE registry_modelversion SET max_batch_size = 1 WHERE number = 1 AND model_id IN "
                            "(SELECT id FROM registry_model WHERE name LIKE 'cnn%');"
                            "UPDATE registry_modelversion SET max_batch_size = 16, max_queue_delay_ms = 2 "
                            "WHERE number = 2 AND model_id IN (SELECT id FROM registry_model WHERE name LIKE 'cnn%');"],
                           check=True)
            platform.stop()
            headers = {**auth, "Prefer": "wait"}
            predict = f"{platform.url}/api/v1/models/bench/mlp/predictions"
            # Metering on and off alternate (on, off, on, off, …; --pairs, default 3) and each figure
            # is the mean of its runs: single runs here vary by +-30% (FINDINGS), more than the
            # effect measured.
            runs: dict[str, list[dict]] = {}
            for label, env in [("platform", {}), ("platform, metering off",
                                                  {"MODELPORT_BENCH_DISABLE_METERING": "1"})] * args.pairs:
                platform.start(**env)
                for _ in range(50):
                    client.post("/api/v1/models/bench/mlp/predictions", json=body, headers={"Prefer": "wait"})
                if bento is not None and label == "platform":  # the peer right before, at each concurrency
                    runs.setdefault("BentoML c=1", []).append(wrk(bento_url, bento_body, connections=1, duration=d))
                runs.setdefault(f"{label} c=1", []).append(
                    wrk(predict, body, connections=1, duration=d, headers=headers))
                if bento is not None and label == "platform":
                    runs.setdefault("BentoML c=32", []).append(wrk(bento_url, bento_body, connections=32, duration=d))
                runs.setdefault(f"{label} c=32", []).append(
                    wrk_with_cpu(platform, predict, body, duration=d, headers=headers))
                platform.stop()
            if bento is not None:
                bento.stop()
                bento = None
            paired = {c: [p[k] / b[k] for p, b in zip(runs[f"platform c={c}"], runs[f"BentoML c={c}"], strict=True)]
                      for c, k in ((1, "p50_ms"), (32, "rps"))} if "BentoML c=1" in runs else {}
            for label, pair in runs.items():
                results[label] = {k: sum(r[k] for r in pair) / len(pair) for k in pair[0]}
            for name, label in CNNS.items():
                results[f"{label} in-process batch 16 vs 1"] = inprocess_batch_gain(cnn_files[name])
            platform.start()
            image = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
            cnn_body, v2_headers = v2_binary(image)
            cnn_runs: dict[str, list[dict]] = {}
            for name, label in CNNS.items():
                for number, run in ((1, f"{label} unbatched c=32"), (2, f"{label} batched c=32")) * args.pairs:
                    url = f"{platform.url}/v2/models/bench/{name}/versions/{number}/infer"
                    for _ in range(20):
                        assert client.post(url.removeprefix(platform.url), content=cnn_body,
                                           headers=v2_headers).status_code == 200
                    cnn_runs.setdefault(run, []).append(
                        wrk_with_cpu(platform, url, cnn_body, duration=d, headers={**auth, **v2_headers}))
            for label, series in cnn_runs.items():
                results[label] = {k: sum(r[k] for r in series) / len(series) for k in series[0]}
        finally:
            platform.stop()
            if bento is not None:
                bento.stop()
            subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f"DROP DATABASE IF EXISTS {db}"],
                           check=False)
            bench_redis = redis.Redis.from_url("redis://127.0.0.1:6379/11")
            keys = list(bench_redis.scan_iter(f"{platform.prefix}*", count=1000))
            for start in range(0, len(keys), 1000):
                bench_redis.delete(*keys[start:start + 1000])

    print(f"\n{'path':32} {'p50 ms':>9} {'p99 ms':>9} {'req/s':>9} {'non-2xx':>8}")
    for label, r in results.items():
        if "gain" in r:
            continue
        print(f"{label:32} {r.get('p50_ms', float('nan')):9.3f} {r.get('p99_ms', float('nan')):9.3f} "
              f"{r.get('rps', float('nan')):9.0f} {int(r.get('non2xx', 0)):8d}")
    p, off, direct_1 = results["platform c=1"], results["platform, metering off c=1"], results["direct HTTP c=1"]
    p32, off32 = results["platform c=32"], results["platform, metering off c=32"]
    print("\nratios (same run):")
    print(f"  platform p50 / direct HTTP p50 (c=1)          {p['p50_ms'] / direct_1['p50_ms']:.2f}")
    print(f"  platform p99 / platform p50 (c=1)             {p['p99_ms'] / p['p50_ms']:.2f}   (goal <= 3)")
    print(f"  platform req/s / direct HTTP req/s (c=32)     {p32['rps'] / results['direct HTTP c=32']['rps']:.2f}")
    print(f"  metering share of p50 (c=1)                   {1 - off['p50_ms'] / p['p50_ms']:+.1%}   (goal <= 10%)")
    print(f"  metering share of throughput (c=32)           {1 - p32['rps'] / off32['rps']:+.1%}   (goal <= 10%)")
    if "BentoML c=1" in results:
        bento_1, bento_32 = results["BentoML c=1"], results["BentoML c=32"]
        print(f"  platform p50 / BentoML p50 (c=1)              {p['p50_ms'] / bento_1['p50_ms']:.2f}   (goal <= 1)"
              f"   pairs: {' '.join(f'{r:.2f}' for r in paired[1])}")
        print(f"  platform req/s / BentoML req/s (c=32)         {p32['rps'] / bento_32['rps']:.2f}   (goal >= 1.5)"
              f"   pairs: {' '.join(f'{r:.2f}' for r in paired[32])}")
    for name, label in CNNS.items():
        gain = results[f"{label} batched c=32"]["rps"] / results[f"{label} unbatched c=32"]["rps"]
        goal = "(goal >= 1.2)" if name == "cnn-dense" else "(the examples' 5 k-parameter CNN: see the share below)"
        print(f"  {label + ' batched / unbatched req/s (c=32)':54}{gain:.2f}   {goal}")
        print(f"  {label + ' in-process, batch 1 / 16 per sample':54}"
              f"{results[f'{label} in-process batch 16 vs 1']['gain']:.2f}   (what onnxruntime itself gains here)")
        # What batching can take off a call: onnxruntime's saving per sample, against the CPU
        # the call costs in all processes (when every core is busy, throughput is its inverse).
        unbatched = results[f"{label} unbatched c=32"]
        per_call = sum(unbatched[f"cpu_{n}"] for n in CPU_NAMES) * 1000 / unbatched["rps"]
        saved = results[f"{label} in-process batch 16 vs 1"]["saved_ms"]
        print(f"  {label + ' share of a call batching saves':54}{saved / per_call:.1%}   (onnxruntime saves "
              f"{saved:.3f} ms per sample at batch 16; an unbatched call costs {per_call:.3f} ms CPU in all)")
    print(f"\nCPU at c=32 (this machine has {os.cpu_count()} cores): cores in use / CPU ms per call")
    runs_shown = ("platform c=32", *(f"{label} {kind} c=32" for label in CNNS.values()
                                     for kind in ("unbatched", "batched")))
    print(f"  {'':10}" + "".join(f"{label:>32}" for label in runs_shown))
    for name in CPU_NAMES:
        cores = [results[label][f"cpu_{name}"] for label in runs_shown]
        cells = [f"{c:5.2f} / {c * 1000 / results[label]['rps']:5.2f}" for c, label in zip(cores, runs_shown,
                                                                                         strict=True)]
        print(f"  {name:10}" + "".join(f"{cell:>32}" for cell in cells))
    print(f"  web processes: {os.environ.get('BENCH_WEB_WORKERS', '1')} (BENCH_WEB_WORKERS)")
    if "BentoML c=1" not in results:
        print("  BentoML peer: not run (set BENCH_BENTOML_PYTHON to a Python with bentoml, onnxruntime, numpy);"
              " FINDINGS measured it at p50 1.6-1.8 ms, 430-510 req/s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
