"""Sandbox launcher: sets up namespaces, mounts, credentials and limits, then execs the job.

Run only by `workers.sandbox` as `python -I -S _sandbox_init.py CONFIG_JSON_FD_OR_PATH`. It must
stay standard-library only and import almost nothing: it starts as root and runs before anything
untrusted, and it is started once per sandboxed job.

Why not `unshare --user --map-user=65534 ...` from util-linux: that maps the sandbox's uid 65534 to
the *caller's* uid outside, i.e. to root. The kernel checks file access with the outside uid, so
such a "nobody" owns every root-owned file: it could write `/etc/passwd` and read `/etc/shadow`
(verified on this host). Here the sandbox uid maps to a fresh unprivileged uid outside
(`UID_BASE + launcher pid`, unique among concurrent jobs), which owns nothing but the scratch dir.

Steps (launcher = L, in the original namespaces, still root):
  1. L joins the job's cgroups (pids, memory), clears supplementary groups, chowns scratch to the
     job uid, opens /proc/self/{uid_map,gid_map,setgroups} (opened as root so that the maps may
     name any outside uid), and calls unshare(USER|NS|NET|IPC|PID|UTS).
  2. L writes the maps and forks I, pid 1 of the new pid namespace. L only waits for I and exits
     with its status; if L dies, I gets SIGKILL (PDEATHSIG) and the kernel kills the whole
     namespace.
  3. I (full capabilities inside the new user namespace only) makes every mount private and
     read-only (recursively), mounts a fresh /proc, binds the scratch dir read-write, exposes the
     interpreter if it lives under a directory the job uid may not traverse (/root is 0700), then
     drops to the job uid/gid, drops every capability, sets no_new_privs.
  4. I forks W, which sets rlimits and execs the job's argv with the given environment. I reaps
     orphans and exits with W's status (128+N for signal N) once W is done; the kernel then kills
     whatever W left behind.

Setup failures are reported on the status fd as one line `error: <message>`; success as `ok`.
The status fd is close-on-exec, so the job can't forge it.
"""

import ctypes
import json
import os
import resource
import signal
import stat
import sys
from typing import Any, NoReturn

UID_BASE = 100_000_000  # outside uids of sandbox jobs: UID_BASE + launcher pid
INNER_ID = 65534  # uid/gid the job sees inside ("nobody")

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

# New mount API (Linux >= 5.12 for mount_setattr); numbers are shared by all architectures.
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class SetupError(Exception):
    pass


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)} (errno {err})")
    return result


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def _mount_setattr(path: str, flags: int, attr_set: int, attr_clr: int = 0) -> None:
    attr = _MountAttr(attr_set, attr_clr, 0, 0)
    _check(
        _libc.syscall(
            SYS_MOUNT_SETATTR,
            AT_FDCWD,
            path.encode(),
            ctypes.c_uint(flags),
            ctypes.byref(attr),
            ctypes.sizeof(attr),
        ),
        f"mount_setattr {path}",
    )


def _prctl(option: int, arg2: int = 0) -> None:
    _check(
        _libc.prctl(
            ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)
        ),
        f"prctl {option}",
    )


def _traversable_by_others(path: str) -> bool:
    st = os.stat(path)
    return stat.S_ISDIR(st.st_mode) and bool(st.st_mode & stat.S_IXOTH)


def _expose(paths: list[str]) -> None:
    """Make each of `paths` reachable by the unprivileged job uid.

    A directory on the way that others may not traverse (e.g. /root, mode 0700, holding pyenv) is
    covered by a small tmpfs that contains only the needed child, bind-mounted back in. Nothing
    else under it becomes visible. Runs while we still have the outside uid 0 for DAC checks.
    """
    for _ in range(16):
        blocked: dict[str, set[str]] = {}
        for path in paths:
            parts = path.strip("/").split("/")
            for depth in range(len(parts)):
                ancestor = "/" + "/".join(parts[:depth])
                if not _traversable_by_others(ancestor):
                    blocked.setdefault(ancestor, set()).add(parts[depth])
                    break
        if not blocked:
            return
        # Fix the shallowest blocked directory first; deeper ones are re-checked next round.
        ancestor = min(blocked, key=len)
        clones = {}
        is_dir = {}
        for child in blocked[ancestor]:
            child_path = os.path.join(ancestor, child)
            is_dir[child] = os.path.isdir(child_path)
            clones[child] = _check(
                _libc.syscall(
                    SYS_OPEN_TREE,
                    AT_FDCWD,
                    child_path.encode(),
                    ctypes.c_uint(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE),
                ),
                f"open_tree {child_path}",
            )
        _mount("tmpfs", ancestor, "tmpfs", MS_NOSUID | MS_NODEV, f"size=64k,mode=0755,uid={INNER_ID},gid={INNER_ID}")
        for child, fd in clones.items():
            child_path = os.path.join(ancestor, child)
            _make_mountpoint_as_inner_user(child_path, is_dir[child])
            _check(
                _libc.syscall(
                    SYS_MOVE_MOUNT,
                    ctypes.c_int(fd),
                    b"",
                    AT_FDCWD,
                    child_path.encode(),
                    ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH),
                ),
                f"move_mount {child_path}",
            )
            os.close(fd)
    raise SetupError("could not expose " + ", ".join(paths))


def _make_mountpoint_as_inner_user(path: str, is_dir: bool) -> None:
    """mkdir (or create an empty file) in a tmpfs of this namespace. Our outside uid 0 is unmapped
    here, so the kernel refuses to create an inode owned by it (EOVERFLOW); a short-lived helper
    creates it with the inner uid as fsuid (we couldn't switch back from that, hence a process)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _libc.setfsgid(INNER_ID)
            _libc.setfsuid(INNER_ID)
            if is_dir:
                os.mkdir(path, 0o755)
            else:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if _wait_status_code(status) != 0:
        raise SetupError(f"mkdir {path} failed")


def _drop_privileges() -> None:
    """Become the job uid/gid (inner 65534) with no capabilities and no way to regain any."""
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last_cap = int(f.read())
    for cap in range(last_cap + 1):
        _prctl(PR_CAPBSET_DROP, cap)
    os.setresgid(INNER_ID, INNER_ID, INNER_ID)
    os.setresuid(INNER_ID, INNER_ID, INNER_ID)
    # The outside uid 0 is not mapped here, so the kernel does not treat setuid as "leaving root"
    # and keeps the permitted set: clear every set explicitly.
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)


def _setup_filesystem(scratch: str, expose: list[str]) -> None:
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _expose(expose)
    # A fresh /proc shows only this pid namespace.
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _mount_setattr("/", AT_RECURSIVE, MOUNT_ATTR_RDONLY)
    # The scratch dir is the one writable place (a new bind mount, then its read-only bit cleared).
    _mount(scratch, scratch, None, MS_BIND)
    _mount_setattr(scratch, 0, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC, attr_clr=MOUNT_ATTR_RDONLY)


def _set_rlimits(limits: dict[str, int]) -> None:
    for name, value in limits.items():
        which = getattr(resource, name)
        if name == "RLIMIT_CPU":
            # SIGXCPU at the soft limit, SIGKILL a little later if it is ignored.
            resource.setrlimit(which, (value, value + 2))
        else:
            resource.setrlimit(which, (value, value))


def _wait_status_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _run_init(config: dict[str, Any], status_fd: int) -> NoReturn:
    """pid 1 of the new pid namespace: set up, start the job, reap, exit with its status."""
    try:
        _setup_filesystem(config["scratch"], config["expose"])
        os.chdir(config["scratch"])
        _drop_privileges()
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (SetupError, OSError) as exc:
        os.write(status_fd, f"error: {exc}\n".encode())
        os._exit(125)
    os.write(status_fd, b"ok\n")
    os.close(status_fd)

    pid = os.fork()
    if pid == 0:
        try:
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
            _set_rlimits(config["rlimits"])
            os.execve(config["argv"][0], config["argv"], config["env"])  # noqa: S606 - argv, no shell
        except BaseException as exc:
            os.write(2, f"sandbox: cannot start {config['argv'][0]}: {exc}\n".encode())
        os._exit(127)
    while True:
        try:
            reaped, status = os.wait()
        except ChildProcessError:
            os._exit(127)
        if reaped == pid:
            # Returning from pid 1 makes the kernel kill everything left in the namespace.
            os._exit(_wait_status_code(status))


def _report_error(status_fd: int, exc: BaseException) -> None:
    os.write(status_fd, f"error: {exc}\n".encode())


def _run_namespace_parent(config: dict[str, Any], status_fd: int, unshared_w: int, mapped_r: int) -> NoReturn:
    """C: enter the new namespaces, wait for L to write the id maps, start init, wait for it."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWUTS
    try:
        _check(_libc.unshare(ctypes.c_int(flags)), "unshare")
    except SetupError as exc:
        _report_error(status_fd, exc)
        os._exit(125)
    os.write(unshared_w, b"u")
    os.close(unshared_w)
    if os.read(mapped_r, 1) != b"m":
        os._exit(125)  # L reported the error already
    os.close(mapped_r)
    init_pid = os.fork()
    if init_pid == 0:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        _run_init(config, status_fd)
    os.close(status_fd)
    _, status = os.waitpid(init_pid, 0)
    os._exit(_wait_status_code(status))


def _run_unisolated(config: dict[str, Any], status_fd: int) -> NoReturn:
    """isolation "none" (explicitly allowed by the caller): limits, clean env and cwd only."""
    os.chdir(config["scratch"])
    os.write(status_fd, b"ok\n")
    os.close(status_fd)
    _set_rlimits(config["rlimits"])
    os.execve(config["argv"][0], config["argv"], config["env"])  # noqa: S606 - argv, no shell


def _write_id_maps(pid: int, job_id: int) -> None:
    """Map the inner "nobody" to the job's own outside uid/gid (needs root in this namespace)."""
    for name, content in (
        ("setgroups", "deny"),
        ("uid_map", f"{INNER_ID} {job_id} 1"),
        ("gid_map", f"{INNER_ID} {job_id} 1"),
    ):
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write(content)


def main() -> int:
    with open(sys.argv[1]) as f:
        config = json.load(f)
    status_fd = int(sys.argv[2])
    os.set_inheritable(status_fd, False)
    is_root = os.geteuid() == 0
    # As root: a fresh outside uid per job. Otherwise (development machines) the only uid an
    # unprivileged user may map is its own; the read-only mounts still confine writes.
    job_id = UID_BASE + os.getpid() if is_root else os.geteuid()
    try:
        for procs_file in config["cgroups"]:
            with open(procs_file, "w") as f:
                f.write(str(os.getpid()))
        if not config["namespaces"]:
            _run_unisolated(config, status_fd)
        if is_root:
            os.setgroups([])
            scratch = config["scratch"]
            for root, dirs, files in os.walk(scratch):
                for name in dirs + files:
                    os.lchown(os.path.join(root, name), job_id, job_id)
            os.chown(scratch, job_id, job_id)
        os.chmod(config["scratch"], 0o700)
    except OSError as exc:
        _report_error(status_fd, exc)
        return 125

    unshared_r, unshared_w = os.pipe()
    mapped_r, mapped_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(unshared_r)
        os.close(mapped_w)
        _run_namespace_parent(config, status_fd, unshared_w, mapped_r)
    os.close(unshared_w)
    os.close(mapped_r)
    os.close(status_fd)
    if os.read(unshared_r, 1) == b"u":
        try:
            _write_id_maps(child, job_id)
            os.write(mapped_w, b"m")
        except OSError as exc:
            # status_fd is closed here; C is still waiting and will exit 125 on EOF.
            sys.stderr.write(f"sandbox setup: writing id maps: {exc}\n")
    os.close(mapped_w)
    _, status = os.waitpid(child, 0)
    return _wait_status_code(status)


if __name__ == "__main__":
    sys.exit(main())
