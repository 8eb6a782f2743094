"""Start and stop the platform's real processes for integration tests.

Every process is started in its own session (process group) and stopped by that group's id,
so a test only ever signals processes it started itself.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

REPO = Path(__file__).resolve().parents[1]
LOG_DIR = REPO / "test-artifacts" / "logs"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "platform"), str(REPO)])
    env["DJANGO_SETTINGS_MODULE"] = "modelport.config.settings"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, sig)
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL the whole group at once (a crash, not a shutdown)."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(timeout=10)

    def pause(self) -> None:
        os.killpg(self.popen.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.popen.pid, signal.SIGCONT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start(name: str, argv: list[str], env: dict[str, str]) -> Proc:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{name}-{os.getpid()}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the process
    popen = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
    return Proc(name, popen, log_path)


def celery_argv(name: str, queues: list[str], *, serve: bool = False) -> list[str]:
    argv = [sys.executable, "-m", "celery", "-A", "modelport.config", "worker", "-P", "solo", "-c", "1",
            "-Q", ",".join(queues), "-n", f"{name}-{os.getpid()}@%h", "--without-gossip", "--without-mingle",
            "--loglevel", "INFO"]
    if serve:
        argv.append("--serve")
    return argv


@dataclass
class Stack:
    base_url: str
    env: dict[str, str]
    prefix: str
    redis: redis.Redis
    procs: dict[str, Proc] = field(default_factory=dict)

    def start_worker(self, name: str, *, serve: bool, queues: list[str] | None = None, **env: str) -> Proc:
        queues = queues or [f"{self.prefix}.control"]
        proc = start(f"{name}-{self.prefix}", celery_argv(name, queues, serve=serve), {**self.env, **env})
        self.procs[name] = proc
        return proc

    def serving_workers(self) -> list[dict]:
        raw = self.redis.hgetall(f"{self.prefix}:workers")
        now = time.time()
        return [b for b in (json.loads(v) for v in raw.values()) if now - b["ts"] < 5]

    def wait_for_serving(self, proc: Proc, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for beat in self.serving_workers():
                if beat["pid"] == proc.popen.pid:
                    return beat
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited:\n{proc.log()[-4000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"{proc.name} sent no heartbeat:\n{proc.log()[-4000:]}")

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()


def wait_http(url: str, proc: Proc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited:\n{proc.log()[-4000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer:\n{proc.log()[-4000:]}")
