"""Run untrusted code (user model source, TorchScript, pickles) in a confined child process.

Contract of `run_in_sandbox`:

- The job runs `argv` with `scratch` as cwd and HOME, and an environment made only of what this
  module sets plus the caller's explicit `env` (nothing from `os.environ`).
- With isolation "namespaces" (see `_sandbox_init.py` for the mechanics) the job runs in new user,
  mount, pid, network, IPC and UTS namespaces, as uid/gid 65534 inside that maps to a fresh
  unprivileged uid outside, with no capabilities and no_new_privs; its root is a tmpfs of its
  own holding only /usr, the interpreter's prefixes, the exposed paths and `scratch` (nothing
  of the host's /run, /var, /tmp, /home or project directories), read-only except `scratch`;
  there is no network (not even loopback to the host), and socket(AF_UNIX) is refused
  (seccomp), so no host socket file can be reached either.
- Limits: address space, CPU seconds, file size, open files (rlimits), a pids cgroup (forks) and
  a memory cgroup (resident memory), and a wall-clock deadline after which every process of the
  job is killed. When the job ends, everything it started is killed too.
- Results come back as files in `scratch`; `report_name` (JSON) is parsed for the caller.
  Nothing the job wrote is trusted: the report is read without following symlinks and size-capped.
- A failure to confine (setup error) raises `SandboxError`; it is never reported as a job failure.

Must run as root for the per-job uid and the cgroups (the Celery convert worker does). Without
root it still uses namespaces where the kernel allows unprivileged ones, mapping the caller's uid.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

GiB = 1024**3
_LAUNCHER = Path(__file__).with_name("_sandbox_init.py")
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_REPORT_MAX_BYTES = 4 * 1024 * 1024
_SETUP_FAILED = 125

# Values the launcher passes for limits it applies itself; see `SandboxResult.killed_reason`.
TIME_LIMIT = "time_limit"
CPU_LIMIT = "cpu_limit"
MEMORY_LIMIT = "memory_limit"
PROCESS_LIMIT = "process_limit"
FILE_SIZE_LIMIT = "file_size_limit"


class SandboxError(RuntimeError):
    """The sandbox itself could not be set up (a platform problem, not the job's fault)."""


class SandboxUnavailable(SandboxError):
    """This host cannot isolate jobs and the caller did not allow running them unsandboxed."""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandboxed job. Sizes in bytes, times in seconds."""

    wall_seconds: float = 300.0
    cpu_seconds: int = 300
    address_space_bytes: int = 4 * GiB
    memory_bytes: int = 4 * GiB
    file_size_bytes: int = 4 * GiB
    open_files: int = 512
    max_processes: int = 64  # processes *and threads* (pids cgroup and RLIMIT_NPROC)
    threads: int = 1  # OMP/MKL/onnxruntime threads the job is told to use


@dataclass(frozen=True)
class SandboxResult:
    """What a finished (or killed) job left behind.

    `returncode`: exit status, 128+N when killed by signal N. `killed_reason`: None, or which
    limit ended the run (`TIME_LIMIT`, `CPU_LIMIT`, `MEMORY_LIMIT`, `PROCESS_LIMIT`,
    `FILE_SIZE_LIMIT`), or `"signal SIGSEGV"` style for other deaths by signal; `limit_message`
    says it for humans ("time limit of 10 s exceeded"). `report`: the parsed `report_name` file or
    None if missing/invalid. `log_tail`: the end of the combined stdout/stderr.
    """

    returncode: int
    timed_out: bool
    killed_reason: str | None
    limit_message: str | None
    log_tail: str
    report: dict[str, Any] | None
    isolation: str
    cgroups: tuple[str, ...] = ()
    wall_seconds: float = 0.0
    peak_memory_mb: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


# --------------------------------------------------------------------------------------------
# cgroups


def _own_cgroup_path(controller: str) -> str | None:
    """This process's cgroup path for a v1 controller ('pids', 'memory'), or None."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    return None


class _JobCgroups:
    """Per-job child cgroups (v1 pids + memory), created next to this process's own cgroup so
    that any limit already placed on the worker still applies. Best effort: a controller that
    can't be used is left out and named in `missing`."""

    def __init__(self, limits: SandboxLimits) -> None:
        self.dirs: dict[str, Path] = {}
        self.missing: list[str] = []
        name = f"modelport-sbx-{uuid.uuid4().hex[:12]}"
        for controller, settings in (
            ("pids", {"pids.max": str(limits.max_processes)}),
            (
                "memory",
                {
                    "memory.limit_in_bytes": str(limits.memory_bytes),
                    # No swapping around the limit (absent when swap accounting is off).
                    "memory.memsw.limit_in_bytes": str(limits.memory_bytes),
                },
            ),
        ):
            own = _own_cgroup_path(controller)
            base = _CGROUP_ROOT / controller
            if own is None or not (base / "cgroup.procs").exists():
                self.missing.append(controller)
                continue
            path = base / own.lstrip("/") / name
            try:
                path.mkdir()
                for key, value in settings.items():
                    if (path / key).exists():
                        (path / key).write_text(value)
            except OSError as exc:
                logger.warning("sandbox: %s cgroup unavailable: %s", controller, exc)
                self._remove(path)
                self.missing.append(controller)
                continue
            self.dirs[controller] = path

    def procs_files(self) -> list[str]:
        return [str(p / "cgroup.procs") for p in self.dirs.values()]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.dirs.values():
            try:
                found.update(int(x) for x in (path / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return found

    def kill_all(self) -> None:
        """SIGKILL every process of the job; repeat until none is left (a fork in flight may
        add one after a read; pids.max bounds how many)."""
        for _ in range(200):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)
        logger.error("sandbox: processes still alive in %s", list(self.dirs.values()))

    def _counter(self, controller: str, filename: str, key: str) -> int:
        path = self.dirs.get(controller)
        if path is None:
            return 0
        try:
            for line in (path / filename).read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == key:
                    return int(parts[1])
        except (OSError, ValueError):
            pass
        return 0

    def pids_limit_hit(self) -> bool:
        return self._counter("pids", "pids.events", "max") > 0

    def oom_killed(self) -> bool:
        return self._counter("memory", "memory.oom_control", "oom_kill") > 0

    def memory_limit_hit(self) -> bool:
        path = self.dirs.get("memory")
        if path is None:
            return False
        try:
            return int((path / "memory.failcnt").read_text()) > 0
        except (OSError, ValueError):
            return False

    def peak_memory_mb(self) -> float | None:
        path = self.dirs.get("memory")
        if path is None:
            return None
        try:
            return int((path / "memory.max_usage_in_bytes").read_text()) / 2**20
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        self.kill_all()
        for path in self.dirs.values():
            self._remove(path)

    @staticmethod
    def _remove(path: Path) -> None:
        # rmdir fails with EBUSY for a moment while killed processes finish exiting.
        for _ in range(100):
            try:
                path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)
        logger.error("sandbox: could not remove cgroup %s", path)


# --------------------------------------------------------------------------------------------
# probing


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[str, str]:
    """(level, reason): run a trivial job in full isolation once per process."""
    if not sys.platform.startswith("linux"):
        return "none", "not Linux"
    scratch = Path(tempfile.mkdtemp(prefix="modelport-sbx-probe-"))
    try:
        argv = [sys.executable, "-I", "-S", "-c", "import os,sys; sys.exit(0 if os.getuid() == 65534 else 3)"]
        try:
            result = _launch(
                argv=argv,
                scratch=scratch.resolve(),
                limits=SandboxLimits(wall_seconds=30, cpu_seconds=30),
                namespaces=True,
                env={},
                expose=_expose_paths(sys.executable, scratch.resolve(), ()),
                report_name=None,
                use_cgroups=False,
            )
        except SandboxError as exc:
            return "none", str(exc)
        if result.returncode != 0:
            return "none", f"probe job exited {result.returncode}: {result.log_tail.strip()[-500:]}"
        return "namespaces", ""
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def isolation_level() -> str:
    """Return "namespaces" if this host can run jobs fully isolated, else "none". Probed once."""
    return _probe()[0]


# --------------------------------------------------------------------------------------------
# running


def run_in_sandbox(
    *,
    argv: Sequence[str],
    scratch: Path,
    limits: SandboxLimits,
    allow_unsandboxed: bool = False,
    env: Mapping[str, str] | None = None,
    readable: Sequence[Path] = (),
    report_name: str | None = "report.json",
) -> SandboxResult:
    """Run `argv` confined, with `scratch` (an existing directory) as its only writable place.

    `argv[0]` must be an absolute path. `env` adds variables to the minimal environment (PATH,
    HOME, TMPDIR, LANG, thread counts). `readable` names paths the job must be able to read that
    may sit under directories other users can't traverse (the interpreter's prefix, `argv[0]`'s
    directory and `scratch` are added automatically).

    Raises `SandboxUnavailable` when isolation is impossible and `allow_unsandboxed` is False, and
    `SandboxError` when setup fails. Ownership of `scratch` passes to the job's uid.
    """
    level = _isolation_for(argv, scratch, allow_unsandboxed)
    scratch = scratch.resolve()
    return _launch(
        argv=list(argv),
        scratch=scratch,
        limits=limits,
        namespaces=level == "namespaces",
        env=dict(env or {}),
        expose=_expose_paths(argv[0], scratch, readable),
        report_name=report_name,
        use_cgroups=True,
    )


def _isolation_for(argv: Sequence[str], scratch: Path, allow_unsandboxed: bool) -> str:
    """The isolation level a job gets ("namespaces" or, when allowed, "none"), after checking
    its arguments; raises SandboxUnavailable when it can't be isolated and that isn't allowed."""
    if not argv or not os.path.isabs(argv[0]):
        raise ValueError("argv[0] must be an absolute path")
    if not scratch.is_dir():
        raise ValueError(f"scratch {scratch} is not a directory")
    level, reason = _probe()
    if level == "none" and not allow_unsandboxed:
        raise SandboxUnavailable(
            f"cannot isolate untrusted code on this host ({reason}); user namespaces with mount "
            "namespaces are required (in containers: allow unshare/mount in seccomp or grant "
            "SYS_ADMIN), or pass allow_unsandboxed=True for trusted development use only"
        )
    return level


def _expose_paths(executable: str, scratch: Path, readable: Sequence[Path]) -> tuple[str, ...]:
    paths = {
        os.path.realpath(sys.base_prefix),
        os.path.realpath(sys.prefix),
        os.path.dirname(os.path.realpath(executable)),
        str(scratch),
        *(os.path.realpath(p) for p in readable),
    }
    return tuple(sorted(paths))


def _job_env(scratch: Path, limits: SandboxLimits, extra: Mapping[str, str]) -> dict[str, str]:
    tmp = scratch / "tmp"
    tmp.mkdir(exist_ok=True)
    threads = str(limits.threads)
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(scratch),
        "TMPDIR": str(tmp),
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
    }
    env.update(extra)
    return env


def _rlimits(limits: SandboxLimits, *, namespaces: bool) -> dict[str, int]:
    rlimits = {
        "RLIMIT_AS": limits.address_space_bytes,
        "RLIMIT_CPU": limits.cpu_seconds,
        "RLIMIT_FSIZE": limits.file_size_bytes,
        "RLIMIT_NOFILE": limits.open_files,
        "RLIMIT_CORE": 0,
    }
    if namespaces:
        # Counted per outside uid, which is unique to the job only in the namespaced mode (as
        # root). Without it the pids cgroup is the bound.
        rlimits["RLIMIT_NPROC"] = limits.max_processes
    return rlimits


def _read_tail(log: Any, limit: int) -> str:
    log.flush()
    size = log.seek(0, os.SEEK_END)
    log.seek(max(0, size - limit))
    data: bytes = log.read(limit)
    text = data.decode("utf-8", errors="replace")
    return ("[…]" + text) if size > limit else text


def read_job_file(path: Path, max_bytes: int) -> bytes | None:
    """Read a file the job wrote without following a symlink it may have planted; None if it is
    missing, not a regular file, or larger than `max_bytes`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
            return None
        return f.read(max_bytes + 1)[:max_bytes]


def _read_report(path: Path) -> dict[str, Any] | None:
    data = read_job_file(path, _REPORT_MAX_BYTES)
    if data is None:
        return None
    try:
        report = json.loads(data)
    except ValueError:
        return None
    return report if isinstance(report, dict) else None


def _classify(
    *,
    returncode: int,
    timed_out: bool,
    limits: SandboxLimits,
    cgroups: _JobCgroups | None,
) -> tuple[str | None, str | None]:
    if timed_out:
        return TIME_LIMIT, f"time limit of {limits.wall_seconds:g} s exceeded"
    if cgroups is not None and cgroups.oom_killed():
        return MEMORY_LIMIT, f"memory limit of {limits.memory_bytes // 2**20} MiB exceeded"
    if returncode == 128 + signal.SIGXCPU:
        return CPU_LIMIT, f"CPU time limit of {limits.cpu_seconds} s exceeded"
    if returncode == 128 + signal.SIGXFSZ:
        return FILE_SIZE_LIMIT, f"file size limit of {limits.file_size_bytes // 2**20} MiB exceeded"
    if returncode != 0 and cgroups is not None and cgroups.pids_limit_hit():
        return PROCESS_LIMIT, f"process limit of {limits.max_processes} processes/threads exceeded"
    if returncode > 128:
        try:
            name = signal.Signals(returncode - 128).name
        except ValueError:
            name = str(returncode - 128)
        return f"signal {name}", f"killed by signal {name}"
    return None, None


def _job_config(*, argv: list[str], scratch: Path, limits: SandboxLimits, namespaces: bool, env: dict[str, str],
                expose: tuple[str, ...]) -> dict[str, Any]:
    """The launcher's configuration (see _sandbox_init.py); "newroot" is added by the caller."""
    return {
        "namespaces": namespaces,
        "scratch": str(scratch),
        "expose": list(expose),
        "links": [argv[0]],
        "argv": argv,
        "env": _job_env(scratch, limits, env),
        "rlimits": _rlimits(limits, namespaces=namespaces),
        "cgroups": [],
    }


def _launch(
    *,
    argv: list[str],
    scratch: Path,
    limits: SandboxLimits,
    namespaces: bool,
    env: dict[str, str],
    expose: tuple[str, ...],
    report_name: str | None,
    use_cgroups: bool,
    log_limit: int = 8192,
) -> SandboxResult:
    config = _job_config(argv=argv, scratch=scratch, limits=limits, namespaces=namespaces, env=env, expose=expose)
    cgroups = _JobCgroups(limits) if use_cgroups else None
    notes: list[str] = []
    if cgroups is not None:
        config["cgroups"] = cgroups.procs_files()
        if cgroups.missing:
            notes.append("no cgroup for: " + ", ".join(cgroups.missing))
    private = Path(tempfile.mkdtemp(prefix="modelport-sbx-"))  # 0700, the job can't see it
    status_r, status_w = os.pipe()
    start = time.monotonic()
    timed_out = False
    try:
        newroot = private / "root"
        newroot.mkdir()
        config["newroot"] = str(newroot)
        config_path = private / "config.json"
        config_path.write_text(json.dumps(config))
        with tempfile.TemporaryFile(dir=private) as log:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(_LAUNCHER), str(config_path), str(status_w)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(status_w,),
                start_new_session=True,
                env={"PATH": "/usr/bin:/bin"},
            )
            os.close(status_w)
            status_w = -1
            try:
                returncode = proc.wait(timeout=limits.wall_seconds)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_job(proc, cgroups)
                returncode = proc.wait()
            if returncode < 0:  # the launcher itself was killed (deadline)
                returncode = 128 - returncode
            with os.fdopen(status_r, "rb") as status_file:
                status_r = -1
                status = status_file.read(4096).decode(errors="replace").strip()
            log_tail = _read_tail(log, log_limit)
        if not status.startswith("ok"):
            if timed_out:
                raise SandboxError(f"sandbox setup did not finish in {limits.wall_seconds:g} s")
            detail = status.removeprefix("error:").strip() or log_tail.strip()[-1000:]
            raise SandboxError(f"sandbox setup failed: {detail}")
        killed_reason, limit_message = _classify(
            returncode=returncode, timed_out=timed_out, limits=limits, cgroups=cgroups
        )
        peak = cgroups.peak_memory_mb() if cgroups is not None else None
        report = _read_report(scratch / report_name) if report_name else None
        return SandboxResult(
            returncode=returncode,
            timed_out=timed_out,
            killed_reason=killed_reason,
            limit_message=limit_message,
            log_tail=log_tail,
            report=report,
            isolation="namespaces" if namespaces else "none",
            cgroups=tuple(cgroups.dirs) if cgroups is not None else (),
            wall_seconds=time.monotonic() - start,
            peak_memory_mb=peak,
            notes=tuple(notes),
        )
    finally:
        for fd in (status_r, status_w):
            if fd >= 0:
                os.close(fd)
        if cgroups is not None:
            cgroups.close()
        shutil.rmtree(private, ignore_errors=True)


def _kill_job(proc: subprocess.Popen[bytes], cgroups: _JobCgroups | None) -> None:
    """Kill every process of the job. The pids cgroup lists them all; killing the launcher also
    takes down its pid namespace (PDEATHSIG chain) when there is no cgroup."""
    if cgroups is not None:
        cgroups.kill_all()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------------------------
# long-lived jobs (model processes)


class SandboxProcess:
    """A sandboxed job that stays up (a torch-runtime model process), started by
    `start_in_sandbox`. Same confinement as `run_in_sandbox`, without a wall-clock deadline: the
    caller bounds each exchange with the job and ends it with `close()`, which kills every
    process of the job (through its cgroup and pid namespace) and removes its private files.
    Not thread-safe; one owner."""

    def __init__(self, *, proc: subprocess.Popen[bytes], cgroups: _JobCgroups, private: Path, log: Any,
                 limits: SandboxLimits, isolation: str) -> None:
        self._proc = proc
        self._cgroups = cgroups
        self._private = private
        self._log = log
        self.limits = limits
        self.isolation = isolation
        self.closed = False

    @property
    def pid(self) -> int:
        """The launcher's pid (outside every namespace of the job)."""
        return self._proc.pid

    def alive(self) -> bool:
        return not self.closed and self._proc.poll() is None

    def job_pids(self) -> set[int]:
        return self._cgroups.pids()

    def memory_bytes(self) -> int | None:
        """Resident memory of the whole job now (its memory cgroup), or None without one."""
        path = self._cgroups.dirs.get("memory")
        if path is None:
            return None
        try:
            return int((path / "memory.usage_in_bytes").read_text())
        except (OSError, ValueError):
            return None

    def death_reason(self) -> str:
        """Why the job ended, for people ("memory limit of 4096 MiB exceeded", "killed by signal
        SIGSEGV", "exited with status 1"); call once it is dead."""
        returncode = self._proc.poll()
        if returncode is None:
            return "still running"
        if returncode < 0:
            returncode = 128 - returncode
        _, message = _classify(returncode=returncode, timed_out=False, limits=self.limits, cgroups=self._cgroups)
        if message:
            return message
        return f"exited with status {returncode}"

    def log_tail(self, limit: int = 4096) -> str:
        try:
            return _read_tail(self._log, limit)
        except (OSError, ValueError):
            return ""

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        _kill_job(self._proc, self._cgroups)
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            logger.error("sandbox: launcher %s did not exit", self._proc.pid)
        self._cgroups.close()
        self._log.close()
        shutil.rmtree(self._private, ignore_errors=True)


def start_in_sandbox(
    *,
    argv: Sequence[str],
    scratch: Path,
    limits: SandboxLimits,
    allow_unsandboxed: bool = False,
    env: Mapping[str, str] | None = None,
    readable: Sequence[Path] = (),
    pass_fds: Sequence[int] = (),
    setup_timeout_s: float = 30.0,
) -> SandboxProcess:
    """Start `argv` confined as `run_in_sandbox` does and return at once (after the sandbox is set
    up), leaving the job running. `pass_fds` are handed to the job under the same numbers (its
    channels to the caller: socketpairs; it can create no unix socket itself). `limits.wall_seconds`
    does not apply; `cpu_seconds` is the job's lifetime CPU budget.

    Raises `SandboxUnavailable` / `SandboxError` like `run_in_sandbox`.
    """
    level = _isolation_for(argv, scratch, allow_unsandboxed)
    scratch = scratch.resolve()
    namespaces = level == "namespaces"
    argv = list(argv)
    config = _job_config(argv=argv, scratch=scratch, limits=limits, namespaces=namespaces, env=dict(env or {}),
                         expose=_expose_paths(argv[0], scratch, readable))
    cgroups = _JobCgroups(limits)
    config["cgroups"] = cgroups.procs_files()
    private = Path(tempfile.mkdtemp(prefix="modelport-sbx-"))
    status_r, status_w = os.pipe()
    log = None
    try:
        newroot = private / "root"
        newroot.mkdir()
        config["newroot"] = str(newroot)
        config_path = private / "config.json"
        config_path.write_text(json.dumps(config))
        log = tempfile.TemporaryFile(dir=private)  # noqa: SIM115 - lives as long as the job, closed by close()
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(_LAUNCHER), str(config_path), str(status_w)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(status_w, *pass_fds),
            start_new_session=True,
            env={"PATH": "/usr/bin:/bin"},
        )
        os.close(status_w)
        status_w = -1
        status = _read_status(status_r, setup_timeout_s)
        if not status.startswith("ok"):
            _kill_job(proc, cgroups)
            proc.wait(timeout=10)
            detail = status.removeprefix("error:").strip() or _read_tail(log, 1000).strip()
            raise SandboxError(f"sandbox setup failed: {detail or 'no status'}")
    except BaseException:
        cgroups.close()
        if log is not None:
            log.close()
        shutil.rmtree(private, ignore_errors=True)
        raise
    finally:
        for fd in (status_r, status_w):
            if fd >= 0:
                os.close(fd)
    return SandboxProcess(proc=proc, cgroups=cgroups, private=private, log=log, limits=limits,
                          isolation="namespaces" if namespaces else "none")


def _read_status(fd: int, timeout_s: float) -> str:
    """The launcher's one status line (it closes the pipe after writing it, or dies)."""
    import select

    data = b""
    deadline = time.monotonic() + timeout_s
    while b"\n" not in data and len(data) < 4096:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "error: sandbox setup did not finish in time"
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()
