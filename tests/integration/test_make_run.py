"""`make run`'s launcher with no DATABASE_URL/REDIS_URL: SQLite + private Redis, demo model, and
Ctrl-C stops every process it started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.stack import REPO, free_port

pytestmark = pytest.mark.integration

CLEARED = ("DATABASE_URL", "REDIS_URL", "MODELPORT_ARTIFACT_ROOT", "MODELPORT_REDIS_PREFIX", "DJANGO_SETTINGS_MODULE",
           "MODELPORT_CALL_DEADLINE_S", "MODELPORT_HEARTBEAT_S")


def _children_of(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True, check=True).stdout
    parents: dict[int, list[int]] = {}
    for line in out.splitlines():
        child, parent = (int(x) for x in line.split())
        parents.setdefault(parent, []).append(child)
    found, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_make_run_embedded_services_demo_and_clean_stop(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(MODELPORT_VAR_DIR=str(tmp_path / "var"), PORT=str(port), HOST="127.0.0.1")
    proc = subprocess.Popen([sys.executable, "deploy/run_local.py"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        key = dashboard = None
        while time.monotonic() < deadline and key is None:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Dashboard: "):
                dashboard = line.split(" ", 1)[1].strip()
            if line.startswith("API key: "):
                key = line.split(" ", 2)[2].strip()
        assert dashboard == f"http://127.0.0.1:{port}/", "".join(lines)
        assert key and key.startswith("mp_"), "".join(lines)
        assert (tmp_path / "var" / "modelport.sqlite3").exists()
        children = _children_of(proc.pid)
        assert len(children) >= 5  # redis, web, two workers, beat

        headers = {"Authorization": f"Bearer {key}", "Prefer": "wait"}
        body = {"input": {"x": [[0.5] * 784]}}
        result = None
        while time.monotonic() < deadline:
            try:
                resp = httpx.post(f"{dashboard}api/v1/models/demo/mlp-demo/predictions", json=body, headers=headers,
                                  timeout=30)
            except httpx.HTTPError:
                time.sleep(0.5)
                continue
            if resp.status_code == 200:
                result = resp.json()
                break
            assert resp.status_code == 503, resp.text  # demo still validating
            time.sleep(0.5)
        assert result is not None and result["status"] == "succeeded", json.dumps(result)
        assert len(result["output"]["y"][0]) == 10
        assert httpx.get(dashboard, timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=40)
    rest = proc.stdout.read()
    assert "stopped" in rest
    leftovers = [pid for pid in children if _alive(pid)]
    assert leftovers == [], f"processes still running after Ctrl-C: {leftovers}"
