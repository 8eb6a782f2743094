"""deploy/k8s/ gives web, the serving pool, the control worker and beat a read-only root
filesystem with a writable /tmp (an emptyDir) and the artifact store: here those processes run
exactly so (a private mount namespace whose / is remounted read-only, /tmp and so the test's
artifact root left writable) and still do their work."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests import stack as stk
from tests.integration.test_serving import ready_model, sum_model

pytestmark = pytest.mark.integration

# / read-only for the process and its children; /tmp a mount of its own, so it stays writable.
READONLY_ROOT = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                 'mount --bind /tmp /tmp && mount -o remount,bind,ro / && exec "$@"', "sh"]


def mount_options(pid: int) -> dict[str, str]:
    """Whether / and /tmp are read-only ("ro") or writable ("rw") for process `pid`."""
    found = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] in ("/", "/tmp"):
            found[fields[4]] = fields[5].split(",")[0]  # the last mount of a path wins
    return found


def test_web_serving_control_and_beat_run_on_a_read_only_root(user_api, fleet, tmp_path):
    from django.conf import settings
    from modelport.gateway.tasks import predictions_reap

    assert str(settings.MODELPORT_ARTIFACT_ROOT).startswith("/tmp/"), "the artifact root must be under /tmp here"
    api = user_api("readonly")
    ready_model(api, "summer", sum_model(tmp_path / "sum.onnx"))
    port = stk.free_port()
    schedule = f"/tmp/mp-beat-{uuid.uuid4().hex[:8]}"
    procs = {
        "web": stk.start(f"ro-web-{fleet.prefix}", [*READONLY_ROOT, sys.executable, "-m", "uvicorn",
                         "modelport.config.asgi:application", "--host", "127.0.0.1", "--port", str(port),
                         "--no-access-log"], fleet.env),
        "serve": stk.start(f"ro-serve-{fleet.prefix}", [*READONLY_ROOT, *stk.celery_argv(
            "roserve", [f"{fleet.prefix}.serving"], serve=True)], fleet.env),
        "control": stk.start(f"ro-control-{fleet.prefix}", [*READONLY_ROOT, *stk.celery_argv(
            "rocontrol", [f"{fleet.prefix}.control"])], fleet.env),
        "beat": stk.start(f"ro-beat-{fleet.prefix}", [*READONLY_ROOT, sys.executable, "-m", "celery", "-A",
                          "modelport.config", "beat", "-s", schedule], fleet.env),
    }
    try:
        base = f"http://127.0.0.1:{port}"
        stk.wait_http(f"{base}/readyz", procs["web"])
        fleet.wait_for_serving(procs["serve"])
        resp = httpx.post(f"{base}/api/v1/models/readonly/summer/predictions", json={"input": {"x": [[1.0, 2.0]]}},
                          headers={"Authorization": api.http.headers["Authorization"], "Prefer": "wait"}, timeout=60)
        assert resp.status_code == 200, resp.text
        assert resp.json()["output"]["y"] == [6.0]
        # An upload above FILE_UPLOAD_MAX_MEMORY_SIZE is spooled to a temporary file (in /tmp).
        big = api.http.post("/api/v1/models", json={"name": "big"})
        assert big.status_code == 201
        resp = httpx.post(f"{base}/api/v1/models/readonly/big/versions",
                          headers={"Authorization": api.http.headers["Authorization"]},
                          data={"format": "onnx"}, files={"artifact": ("big.onnx", b"\0" * (5 * 1024 * 1024))},
                          timeout=60)
        assert resp.status_code == 202, resp.text
        predictions_reap.apply_async(queue=f"{fleet.prefix}.control")
        deadline = time.monotonic() + 30
        while "predictions_reap" not in procs["control"].log() or "succeeded" not in procs["control"].log():
            assert time.monotonic() < deadline, procs["control"].log()[-3000:]
            time.sleep(0.2)
        deadline = time.monotonic() + 30
        while not list(Path("/tmp").glob(f"{Path(schedule).name}*")):  # the schedule file (-s)
            assert time.monotonic() < deadline, procs["beat"].log()[-3000:]
            time.sleep(0.2)
        for name, proc in procs.items():
            assert proc.popen.poll() is None, f"{name} exited:\n{proc.log()[-3000:]}"
            assert mount_options(proc.popen.pid) == {"/": "ro", "/tmp": "rw"}, name  # it really ran so
            assert "Read-only file system" not in proc.log(), f"{name} wrote outside /tmp:\n{proc.log()[-3000:]}"
    finally:
        for proc in procs.values():
            proc.stop()
        for leftover in Path("/tmp").glob(f"{Path(schedule).name}*"):
            leftover.unlink()
