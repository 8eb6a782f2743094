"""`make run`'s launcher with no DATABASE_URL/REDIS_URL: SQLite + private Redis, demo model and
the demo account's login printed, a process that dies restarted, and Ctrl-C / SIGTERM stops every
process it started. (tests/integration/test_run_only.py runs `make run` itself, from a fresh copy
with only the run requirements.)"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.integration.launcher import Launched, alive, children_of, dashboard_login, launch
from tests.stack import REPO, free_port

pytestmark = pytest.mark.integration

CLEARED = ("DATABASE_URL", "REDIS_URL", "MODELPORT_ARTIFACT_ROOT", "MODELPORT_REDIS_PREFIX", "DJANGO_SETTINGS_MODULE",
           "MODELPORT_CALL_DEADLINE_S", "MODELPORT_HEARTBEAT_S")


def start_launcher(tmp_path: Path) -> Launched:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(MODELPORT_VAR_DIR=str(tmp_path / "var"), PORT=str(port), HOST="127.0.0.1")
    run = launch([sys.executable, "deploy/run_local.py"], cwd=REPO, env=env)
    run.read_until_key(timeout=120)
    assert run.printed.get("Dashboard") == f"http://127.0.0.1:{port}/", run.output
    assert run.key.startswith("mp_"), run.output
    return run


def child_named(run: Launched, marker: str) -> int:
    """The pid of the launcher's direct child whose command line contains `marker`."""
    for pid in children_of(run.proc.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except FileNotFoundError:
            continue
        if ppid == run.proc.pid and marker.encode() in argv:
            return pid
    raise AssertionError(f"no child with {marker!r} in its command line")


def test_make_run_embedded_services_demo_login_and_clean_stop(tmp_path):
    run = start_launcher(tmp_path)
    try:
        assert run.printed.get("Username") == "demo", run.output
        assert (tmp_path / "var" / "modelport.sqlite3").exists()
        children = children_of(run.proc.pid)
        assert len(children) >= 5  # redis, web, two workers, beat

        result = run.predict_demo(timeout=120).json()
        assert result["status"] == "succeeded"
        assert len(result["output"]["y"][0]) == 10
        assert httpx.get(run.printed["Dashboard"], timeout=10).status_code == 200
        client, signed_in = dashboard_login(run.base_url, "demo", run.printed["Password"])
        try:
            assert signed_in.status_code == 302 and signed_in.headers["location"] == "/", signed_in.text
            assert "mlp-demo" in client.get("/").text
        finally:
            client.close()
    finally:
        rest = run.stop()
    assert "stopped" in rest
    leftovers = [pid for pid in children if alive(pid)]
    assert leftovers == [], f"processes still running after Ctrl-C: {leftovers}"


def test_a_dead_process_is_restarted_and_the_demo_keeps_answering(tmp_path):
    run = start_launcher(tmp_path)
    started: set[int] = set()
    try:
        run.predict_demo(timeout=120)
        started |= children_of(run.proc.pid)
        for name, marker in (("worker-serve", "serve@%h"), ("web", "modelport.config.asgi:application")):
            old = child_named(run, marker)
            os.killpg(old, signal.SIGKILL)
            run.wait_for_line(rf"{name} exited with -9 after \d+ s; restarting it in \d+ s", timeout=30)
            new = int(run.wait_for_line(rf"{name} restarted \(pid (\d+)\)", timeout=30)[1])
            assert new != old and alive(new) and not alive(old)
            assert child_named(run, marker) == new
            started.add(new)
            # A dead serving worker's heartbeat routes calls to its version list until it is stale
            # (MODELPORT_WORKER_STALE_S, 15 s): calls in that window may answer 503 at their deadline.
            answer = run.predict_demo(timeout=120).json()
            assert answer["status"] == "succeeded" and len(answer["output"]["y"][0]) == 10
        started |= children_of(run.proc.pid)
        assert run.proc.poll() is None
        os.killpg(run.proc.pid, signal.SIGTERM)
        run.proc.wait(timeout=60)
    finally:
        rest = run.stop()
    assert run.proc.returncode == 0 and "stopped" in rest, run.output
    leftovers = [pid for pid in started if alive(pid)]
    assert leftovers == [], f"processes still running after SIGTERM: {leftovers}"


def test_a_busy_port_is_refused_before_anything_starts(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k not in CLEARED}
        env.update(MODELPORT_VAR_DIR=str(tmp_path / "var"), PORT=str(port), HOST="127.0.0.1")
        done = subprocess.run([sys.executable, "deploy/run_local.py"], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=60)
    assert done.returncode == 1
    assert f"127.0.0.1:{port} is already in use" in done.stderr
    assert not (tmp_path / "var").exists()  # no database, no Redis, no log was made
