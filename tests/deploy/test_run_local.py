"""deploy/run_local.py's supervisor on real short-lived processes: restart with a doubling backoff,
give up on a process that keeps dying at start, kill what a dead process left in its group."""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import time

import pytest

from tests.integration.launcher import alive
from tests.stack import REPO


@pytest.fixture
def run_local(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("run_local_under_test", REPO / "deploy" / "run_local.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "VAR", tmp_path)
    monkeypatch.setattr(module, "RESTART_BACKOFF_S", 0.1)
    monkeypatch.setattr(module, "STABLE_S", 3.0)
    monkeypatch.setattr(module, "MAX_QUICK_FAILURES", 3)
    return module


def tend_until(sup, predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reason = sup.tend()
        if reason is not None or predicate():
            return reason
        time.sleep(0.02)
    raise AssertionError("condition not reached")


def test_a_process_that_keeps_dying_at_start_stops_the_platform(run_local, capsys):
    sup = run_local.Supervisor()
    sup.start("crashy", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], dict(os.environ))
    try:
        reason = tend_until(sup, lambda: False)
    finally:
        sup.stop_all()
    assert reason is not None and reason.startswith("crashy exited (last with 3) 3 times in a row, each within 3 s")
    printed = capsys.readouterr().out
    # Two restarts with a doubling backoff (0.2 s, then 0.4 s), then the third quick exit gives up.
    assert "crashy exited with 3 after 0 s; restarting it in 0.2 s" in printed
    assert "crashy exited with 3 after 0 s; restarting it in 0.4 s" in printed
    assert printed.count("crashy restarted (pid ") == 2
    assert (run_local.VAR / "crashy.log").read_text().count("boom") == 3


def test_a_killed_process_is_restarted_and_its_group_is_cleaned(run_local, tmp_path, capsys):
    sup = run_local.Supervisor()
    pidfile = tmp_path / "grandchild.pid"
    # The leader leaves a grandchild in its group, as a worker leaves its pool or a job.
    script = f"sleep 300 & echo $! > {pidfile}; wait"
    child = sup.start("worker", ["sh", "-c", script], dict(os.environ))
    try:
        deadline = time.monotonic() + 10
        while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.02)
        grandchild = int(pidfile.read_text())
        first = child.proc.pid
        pidfile.unlink()
        os.kill(first, signal.SIGKILL)  # the leader only: the grandchild lives on in the group
        assert tend_until(sup, lambda: child.proc.pid != first) is None
        assert not alive(grandchild), "the dead leader's group was not killed before the restart"
        assert child.proc.poll() is None and alive(child.proc.pid)
        printed = capsys.readouterr().out
        assert "worker exited with -9 after 0 s; restarting it in 0.2 s" in printed
        assert f"worker restarted (pid {child.proc.pid})" in printed
        while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.02)
        second_grandchild = int(pidfile.read_text())
    finally:
        sup.stop_all()
    assert not alive(child.proc.pid) and not alive(second_grandchild)


def test_backoff_doubles_and_resets_after_a_stable_run(run_local, monkeypatch):
    monkeypatch.setattr(run_local, "MAX_QUICK_FAILURES", 10)
    sup = run_local.Supervisor()
    child = sup.start("napper", [sys.executable, "-c", "import time; time.sleep(300)"], dict(os.environ))
    delays = []
    try:
        for _ in range(3):
            pid = child.proc.pid
            os.kill(pid, signal.SIGKILL)
            tend_until(sup, lambda pid=pid: child.restart_at is not None)
            delays.append(round(child.restart_at - time.monotonic(), 1))
            tend_until(sup, lambda pid=pid: child.proc.pid != pid and child.restart_at is None)
        assert delays == [0.2, 0.4, 0.8]
        # A process that stayed up STABLE_S starts again from the base backoff.
        child.started -= run_local.STABLE_S
        os.kill(child.proc.pid, signal.SIGKILL)
        tend_until(sup, lambda: child.restart_at is not None)
        assert round(child.restart_at - time.monotonic(), 1) == 0.1
        assert child.quick_failures == 0
    finally:
        sup.stop_all()
