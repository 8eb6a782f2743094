"""Drive `make run` / deploy/run_local.py as a user would: start it in its own process group,
read what it prints, call the demo model, sign in to the dashboard with the printed login, and
stop it with Ctrl-C's signal (SIGINT to its group)."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

DEMO_BODY = {"input": {"x": [[0.5] * 784]}}


@dataclass
class Launched:
    proc: subprocess.Popen
    pending: queue.Queue[str | None] = field(default_factory=queue.Queue)  # printed lines; None at EOF
    eof: bool = False
    lines: list[str] = field(default_factory=list)
    printed: dict[str, str] = field(default_factory=dict)  # "Dashboard", "Username", "Password", "API key"
    reader: threading.Thread | None = None

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def read_until_key(self, timeout: float) -> None:
        """Read printed lines until `API key:` (or the launcher exits, or `timeout` passes)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and "API key" not in self.printed:
            line = self.readline(deadline)
            if line is None:
                break
            match = re.match(r"(Dashboard|Username|Password|API key): (\S+)$", line.rstrip("\n"))
            if match:
                self.printed[match[1]] = match[2]

    def readline(self, deadline: float) -> str | None:
        """The next printed line, or None at EOF or once `deadline` (monotonic) has passed."""
        if self.eof:
            return None
        try:
            line = self.pending.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            return None
        if line is None:
            self.eof = True
            return None
        self.lines.append(line)
        return line

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.readline(deadline)
            if line is None:
                break
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"no line matching /{pattern}/ within {timeout} s:\n{self.output}")

    @property
    def base_url(self) -> str:
        return self.printed["Dashboard"].rstrip("/")

    @property
    def key(self) -> str:
        return self.printed["API key"]

    def predict_demo(self, timeout: float) -> httpx.Response:
        """POST the demo call with Prefer: wait until it answers 200 (503 while the demo model is
        still validating, connection errors while the web process starts)."""
        deadline = time.monotonic() + timeout
        headers = {"Authorization": f"Bearer {self.key}", "Prefer": "wait"}
        url = f"{self.base_url}/api/v1/models/demo/mlp-demo/predictions"
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                resp = httpx.post(url, json=DEMO_BODY, headers=headers, timeout=30)
            except httpx.HTTPError as exc:
                last = repr(exc)
                time.sleep(0.5)
                continue
            if resp.status_code == 200:
                return resp
            assert resp.status_code == 503, resp.text
            last = resp.text
            time.sleep(0.5)
        raise AssertionError(f"the demo model did not answer 200 within {timeout} s: {last}\n{self.output}")

    def stop(self, timeout: float = 60.0) -> str:
        """SIGINT to the launcher's group (what Ctrl-C does); returns what it printed after."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.reader.join(timeout=10)
        rest = []
        while (line := self.readline(time.monotonic() + 1)) is not None:
            rest.append(line)
        return "".join(rest)


def launch(argv: list[str], *, cwd: Path, env: dict[str, str]) -> Launched:
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    launched = Launched(proc)
    launched.reader = threading.Thread(target=_pump, args=(proc.stdout, launched.pending), daemon=True)
    launched.reader.start()
    return launched


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)
    stream.close()


def dashboard_login(base_url: str, username: str, password: str) -> tuple[httpx.Client, httpx.Response]:
    """Sign in through the dashboard's login form (CSRF cookie and token, as a browser does).
    Returns the client (signed in when the answer is a 302 to /) and the form's answer."""
    client = httpx.Client(base_url=base_url, timeout=30, follow_redirects=False)
    form = client.get("/login/")
    assert form.status_code == 200, form.text
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
    assert token, form.text
    resp = client.post("/login/", data={"username": username, "password": password,
                                        "csrfmiddlewaretoken": token[1], "next": "/"},
                       headers={"Referer": f"{base_url}/login/"})
    return client, resp


def children_of(pid: int) -> set[int]:
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


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False
