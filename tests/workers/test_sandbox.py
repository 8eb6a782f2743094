"""The sandbox's confinement, proven with small plain-Python jobs (no torch: fast)."""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.workers.conftest import processes_mentioning
from workers import sandbox
from workers.sandbox import SandboxLimits, SandboxResult, SandboxUnavailable, run_in_sandbox

pytestmark = pytest.mark.usefixtures("isolated")

EXPECTED_ENV = [
    "HOME",
    "LANG",
    "MKL_NUM_THREADS",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "PATH",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONHASHSEED",
    "TMPDIR",
]


def run_job(
    tmp_path: Path, code: str, limits: SandboxLimits | None = None, readable: tuple[Path, ...] = (), **kwargs: Any
) -> SandboxResult:
    """Run `code` as a script in a fresh scratch dir under `tmp_path`; `readable` paths are shown
    to the job besides the script (nothing else of the host's is)."""
    tmp_path.chmod(0o755)  # pytest makes it 0700; the tests below want a plain directory tree
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(code))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    return run_in_sandbox(
        argv=[sys.executable, "-I", str(script)],
        scratch=scratch,
        limits=limits or SandboxLimits(wall_seconds=30, cpu_seconds=30),
        readable=[script, *readable],
        **kwargs,
    )


def test_isolation_is_available_on_this_host() -> None:
    assert sandbox.isolation_level() == "namespaces"


def test_job_runs_as_nobody_with_only_the_sandbox_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_KEY", "s3cret-value")
    monkeypatch.setenv("DATABASE_URL", "postgres://u:pw@127.0.0.1/db")
    result = run_job(
        tmp_path,
        """
        import json, os
        json.dump({"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
                   "ppid": os.getppid(), "visible_pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
                   "cwd": os.getcwd(), "env": sorted(os.environ),
                   "caps": [l for l in open("/proc/self/status") if l.startswith(("CapEff", "NoNewPrivs"))]},
                  open("report.json", "w"))
        """,
    )
    assert result.returncode == 0, result.log_tail
    assert result.isolation == "namespaces"
    assert result.cgroups == ("pids", "memory")
    report = result.report
    assert report is not None
    assert (report["uid"], report["gid"], report["groups"]) == (65534, 65534, [])
    # Own pid namespace: the parent is the sandbox's init (pid 1), nothing else is visible.
    assert report["ppid"] == 1
    assert report["visible_pids"][0] == 1 and len(report["visible_pids"]) == 2
    assert report["cwd"] == str((tmp_path / "scratch").resolve())
    assert report["env"] == EXPECTED_ENV
    assert report["caps"] == ["CapEff:\t0000000000000000\n", "NoNewPrivs:\t1\n"]
    # Outside, the job's files belong to a dedicated unprivileged uid, not root.
    assert (tmp_path / "scratch" / "report.json").stat().st_uid >= 100_000_000


def test_writes_outside_scratch_fail_even_where_permissions_allow(tmp_path: Path) -> None:
    closed = tmp_path / "closed"  # root-owned 0755: "nobody" mapped to root could write here
    closed.mkdir(mode=0o755)
    open_dir = tmp_path / "open"  # world-writable: only the read-only mount stops this
    open_dir.mkdir()
    open_dir.chmod(0o777)
    result = run_job(
        tmp_path,
        f"""
        import json
        errors = {{}}
        open("inside.txt", "w").write("ok")
        for path in ["{closed}/x", "{open_dir}/x", "/etc/modelport-x", "/tmp/modelport-x", "/dev/shm/modelport-x"]:
            try:
                open(path, "w").write("pwned")
            except OSError as exc:
                errors[path] = exc.strerror
        json.dump(errors, open("report.json", "w"))
        """,
        readable=(closed, open_dir),
    )
    assert result.returncode == 0, result.log_tail
    assert result.report == {
        f"{closed}/x": "Read-only file system",
        f"{open_dir}/x": "Read-only file system",
        "/etc/modelport-x": "Read-only file system",
        "/tmp/modelport-x": "Read-only file system",
        "/dev/shm/modelport-x": "Read-only file system",
    }
    assert list(closed.iterdir()) == [] and list(open_dir.iterdir()) == []
    assert not Path("/tmp/modelport-x").exists() and not Path("/etc/modelport-x").exists()
    assert (tmp_path / "scratch" / "inside.txt").read_text() == "ok"


def test_root_only_files_are_unreadable(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("root only")
    secret.chmod(0o600)
    result = run_job(
        tmp_path,
        f"""
        import json
        try:
            data = open("{secret}").read()
        except OSError as exc:
            data = exc.strerror
        json.dump({{"read": data}}, open("report.json", "w"))
        """,
        readable=(secret,),  # shown to the job, and still not readable by its uid
    )
    assert result.report == {"read": "Permission denied"}


def test_no_network_even_to_loopback(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = run_job(
            tmp_path,
            f"""
            import json, socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=3)
                outcome = "connected"
            except OSError as exc:
                outcome = exc.strerror
            json.dump({{"connect": outcome}}, open("report.json", "w"))
            """,
        )
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()
    assert result.report == {"connect": "Network is unreachable"}


def test_fork_bomb_is_bounded_and_cleaned_up(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_job(
        tmp_path,
        """
        import os, time
        count = 0
        try:
            for _ in range(10_000):
                if os.fork() == 0:
                    time.sleep(120)
                    os._exit(0)
                count += 1
        finally:
            open("forked.txt", "w").write(str(count))
        """,
    )
    assert time.monotonic() - started < 20
    assert result.killed_reason == sandbox.PROCESS_LIMIT
    assert result.limit_message == "process limit of 64 processes/threads exceeded"
    forked = int((tmp_path / "scratch" / "forked.txt").read_text())
    assert 10 < forked < 64
    assert processes_mentioning(str(tmp_path)) == []


def test_wall_clock_deadline_kills_every_process(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_job(
        tmp_path,
        """
        import os
        if os.fork() == 0:
            os.setsid()  # escaping the process group must not escape the kill
        while True:
            pass
        """,
        limits=SandboxLimits(wall_seconds=3, cpu_seconds=60),
    )
    assert 3 <= time.monotonic() - started < 10
    assert result.timed_out
    assert result.killed_reason == sandbox.TIME_LIMIT
    assert result.limit_message == "time limit of 3 s exceeded"
    assert processes_mentioning(str(tmp_path)) == []


def test_cpu_limit(tmp_path: Path) -> None:
    result = run_job(tmp_path, "while True: pass\n", limits=SandboxLimits(wall_seconds=30, cpu_seconds=1))
    assert not result.timed_out
    assert result.killed_reason == sandbox.CPU_LIMIT
    assert result.limit_message == "CPU time limit of 1 s exceeded"


def test_memory_cgroup_limit_kills_the_job(tmp_path: Path) -> None:
    result = run_job(
        tmp_path,
        """
        chunks = []
        for _ in range(64):
            chunks.append(bytearray(16 * 2**20))  # touched (zeroed) memory, 1 GiB in total
        """,
        limits=SandboxLimits(wall_seconds=30, cpu_seconds=30, memory_bytes=256 * 2**20),
    )
    assert result.killed_reason == sandbox.MEMORY_LIMIT
    assert result.limit_message == "memory limit of 256 MiB exceeded"
    assert result.returncode == 128 + 9


def test_address_space_limit_refuses_huge_allocations(tmp_path: Path) -> None:
    result = run_job(
        tmp_path,
        """
        import json
        try:
            bytearray(100 * 2**30)
            outcome = "allocated"
        except MemoryError:
            outcome = "MemoryError"
        json.dump({"alloc": outcome}, open("report.json", "w"))
        """,
    )
    assert result.report == {"alloc": "MemoryError"}


def test_report_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "host-file.json"
    target.write_text(json.dumps({"leaked": True}))
    result = run_job(tmp_path, f"import os\nos.symlink('{target}', 'report.json')\n")
    assert result.returncode == 0, result.log_tail
    assert (tmp_path / "scratch" / "report.json").is_symlink()
    assert result.report is None


def test_log_tail_is_captured_and_truncated(tmp_path: Path) -> None:
    result = run_job(tmp_path, "import sys\nprint('x' * 20000, flush=True)\nsys.stderr.write('the end\\n')\n")
    assert result.log_tail.startswith("[…]")
    assert result.log_tail.endswith("the end\n")
    assert len(result.log_tail) == len("[…]") + 8192


def test_refuses_to_run_unsandboxed_unless_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "_probe", lambda: ("none", "user namespaces are disabled"))
    with pytest.raises(SandboxUnavailable, match="user namespaces are disabled"):
        run_job(tmp_path, "open('report.json', 'w').write('{}')\n")
    assert not (tmp_path / "scratch" / "report.json").exists()

    again = tmp_path / "again"
    again.mkdir()
    result = run_job(
        again, "import json, os\njson.dump({'uid': os.getuid()}, open('report.json', 'w'))\n", allow_unsandboxed=True
    )
    assert result.isolation == "none"
    assert result.report == {"uid": os.getuid()}


def test_other_uploads_under_a_private_root_are_invisible(tmp_path: Path) -> None:
    # Artifact storage kept 0700: the job reaches its own scratch inside it, and nothing else.
    tmp_path.chmod(0o755)
    root = tmp_path / "artifacts"
    root.mkdir(mode=0o700)
    (root / "other-upload.bin").write_text("someone else's weights")
    (root / "other-upload.bin").chmod(0o644)
    scratch = root / "job-1" / "scratch"
    scratch.mkdir(parents=True)
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, os
            json.dump({{"listing": sorted(os.listdir("{root}")), "other": os.path.exists("{root}/other-upload.bin")}},
                      open("report.json", "w"))
            """
        )
    )
    result = run_in_sandbox(
        argv=[sys.executable, "-I", str(script)],
        scratch=scratch,
        limits=SandboxLimits(wall_seconds=30),
        readable=[script],
    )
    assert result.report == {"listing": ["job-1"], "other": False}


def _host_unix_sockets(roots: tuple[str, ...] = ("/run", "/var/run", "/tmp"), limit: int = 500) -> list[str]:
    """Socket files under `roots` on the host, as the worker (root) sees them."""
    found: list[str] = []
    for root in roots:
        for directory, _, files in os.walk(root):
            for name in files:
                path = os.path.join(directory, name)
                try:
                    if stat.S_ISSOCK(os.lstat(path).st_mode):
                        found.append(path)
                except OSError:
                    continue
                if len(found) >= limit:
                    return found
    return found


def test_no_host_unix_socket_is_reachable(tmp_path: Path) -> None:
    sockets = _host_unix_sockets()
    # This machine's PostgreSQL socket trusts local connections as superuser: the probe must
    # have it in the list to mean anything.
    assert "/var/run/postgresql/.s.PGSQL.5432" in sockets or "/run/postgresql/.s.PGSQL.5432" in sockets
    result = run_job(
        tmp_path,
        f"""
        import json, os, socket
        outcome = {{}}
        for path in {sockets!r}:
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            except OSError as exc:
                outcome[path] = ["socket", exc.strerror, os.path.exists(path)]
                continue
            try:
                sock.connect(path)
                outcome[path] = ["connected", "", True]
            except OSError as exc:
                outcome[path] = ["connect", exc.strerror, os.path.exists(path)]
        # The job's own channels (inherited socketpairs) keep working.
        left, right = socket.socketpair()
        left.sendall(b"ping")
        json.dump({{"sockets": outcome, "pair": right.recv(4).decode()}}, open("report.json", "w"))
        """,
    )
    assert result.returncode == 0, result.log_tail
    assert result.report is not None
    assert result.report["pair"] == "ping"
    # Refused twice over: socket(AF_UNIX) fails (seccomp), and the file isn't in the job's root.
    assert result.report["sockets"] == {path: ["socket", "Permission denied", False] for path in sockets}


def test_host_logs_settings_and_directories_are_invisible(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    host_paths = [
        str(repo / "platform" / "modelport" / "config" / "settings.py"),
        str(repo / "var"),
        str(repo / "test-artifacts"),
        str(repo / ".git"),
        "/etc/shadow",
        "/etc/hostname",
        "/etc/postgresql",
        "/var/log",
        "/var/lib/postgresql",
        "/srv",
        "/mnt",
        "/run",
        "/var",
    ]
    assert Path(host_paths[0]).is_file()  # the probe looks for something that exists outside
    result = run_job(
        tmp_path,
        f"""
        import json, os
        def listing(path):
            try:
                return sorted(os.listdir(path))
            except OSError as exc:
                return exc.strerror
        json.dump({{"visible": [p for p in {host_paths!r} if os.path.lexists(p)],
                    "home": listing("/home"), "tmp": listing("/tmp"), "root": listing("/"),
                    "root_home": listing("/root"),
                    "etc": listing("/etc")}}, open("report.json", "w"))
        """,
    )
    assert result.returncode == 0, result.log_tail
    report = result.report
    assert report is not None
    assert report["visible"] == []
    assert report["home"] == "No such file or directory"
    # /tmp holds only the way to what the job was shown: its script and scratch dir (under
    # pytest's tmp_path) and the interpreter (a checkout under /tmp has its virtualenv there).
    shown = [tmp_path.resolve(), Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()]
    own = sorted({p.relative_to("/tmp").parts[0] for p in shown if p.is_relative_to("/tmp")})
    assert report["tmp"] == own
    assert set(report["root"]) <= {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "sys",
                                   "tmp", "usr", *Path(sys.base_prefix).resolve().parts[1:2],
                                   *Path(sys.prefix).resolve().parts[1:2], *tmp_path.resolve().parts[1:2]}
    assert report["etc"] == ["group", "ld.so.cache", "localtime", "passwd"]
    # /root shows at most the way to the interpreter (pyenv keeps it there), nothing of root's.
    interpreter = Path(sys.base_prefix).resolve()
    if interpreter.parts[1] == "root":
        assert report["root_home"] == [interpreter.parts[2]]
    else:
        assert report["root_home"] == "No such file or directory"
