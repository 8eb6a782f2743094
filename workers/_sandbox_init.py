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
  3. I (full capabilities inside the new user namespace only) makes every mount private, mounts
     a tmpfs on `newroot` (an empty directory in the launcher's private dir) and binds into it,
     at their own paths, only /usr (+ the merged-/usr symlinks), a few /etc files, the CPU
     topology in /sys, five device nodes, the interpreter's prefixes, the exposed paths and the
     scratch dir; mounts a fresh /proc there, pivot_roots into it and detaches the host's tree;
     makes everything read-only but the scratch dir; then drops to the job uid/gid, drops every
     capability, sets no_new_privs. (bubblewrap builds its root the same way; see
     docs/ARCHITECTURE.md for why this launcher is not bubblewrap.)
  4. I forks W, which sets rlimits, installs a seccomp filter refusing socket(AF_UNIX) (EACCES)
     and execs the job's argv with the given environment. I reaps
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
import sys
from typing import Any, NoReturn

UID_BASE = 100_000_000  # outside uids of sandbox jobs: UID_BASE + launcher pid
INNER_ID = 65534  # uid/gid the job sees inside ("nobody")

# System paths every job sees, read-only. The top-level ones that are symlinks on merged-/usr
# systems (/bin -> usr/bin) are recreated as symlinks; the rest are bound. Nothing else of the host
# exists in the job's root: no /run, /var, /tmp, /home, /srv, /mnt, /sys (but the CPU topology
# that thread pools read), no project directories beyond the exposed files, so no socket file of
# the host (PostgreSQL, Redis, D-Bus) can be reached and no host log or setting can be read.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")
SYSTEM_READONLY_DIRS = ("/sys/devices/system/cpu",)
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
EMPTY_DIRS = ("/proc", "/tmp", "/dev/shm", "/etc")
GENERATED_FILES = {
    "/etc/passwd": f"nobody:x:{INNER_ID}:{INNER_ID}:nobody:/nonexistent:/usr/sbin/nologin\n",
    "/etc/group": f"nogroup:x:{INNER_ID}:\n",
}

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
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
MNT_DETACH = 2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}

# Classic BPF for the seccomp filter (linux/filter.h, linux/seccomp.h, linux/audit.h).
BPF_LD, BPF_W, BPF_ABS = 0x00, 0x00, 0x20
BPF_JMP, BPF_JEQ, BPF_JGE, BPF_K = 0x05, 0x10, 0x30, 0x00
BPF_RET = 0x06
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
X32_SYSCALL_BIT = 0x40000000  # x86_64 only; aarch64 syscall numbers never reach it
AF_UNIX = 1
EACCES = 13
# machine -> (AUDIT_ARCH_*, socket syscall number)
SECCOMP_ARCH = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}

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


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


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


def _create_as_inner_user(base: str, entries: list[tuple[str, str, str]]) -> None:
    """Create `(path, kind, data)` entries under `base` (kind "dir", "file" with `data` as
    content, or "symlink" to `data`; `path` absolute, taken relative to `base`), parents
    included. Our outside uid 0 is unmapped here, so the kernel refuses to create an inode owned
    by it (EOVERFLOW); a short-lived helper creates them with the inner uid as fsuid (we couldn't
    switch back from that, hence a process). It enters `base` first, as root: the directories
    above it are the launcher's own (0700). An existing path is left as it is (it lies in a
    bound tree)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(base)
            _libc.setfsgid(INNER_ID)
            _libc.setfsuid(INNER_ID)
            for path, kind, data in entries:
                rel = path.lstrip("/")
                if os.path.lexists(rel):
                    continue
                if os.path.dirname(rel):
                    os.makedirs(os.path.dirname(rel), mode=0o755, exist_ok=True)
                if kind == "dir":
                    os.mkdir(rel, 0o755)
                elif kind == "symlink":
                    os.symlink(data, rel)
                else:
                    fd = os.open(rel, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                    os.write(fd, data.encode())
                    os.close(fd)
            code = 0
        except OSError as exc:
            os.write(2, f"sandbox setup: {exc}\n".encode())
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if _wait_status_code(status) != 0:
        raise SetupError("creating the job's root failed: " + ", ".join(e[0] for e in entries))


def _symlinks_on(path: str, found: list[tuple[str, str, str]], depth: int = 0) -> None:
    """Add to `found` every symlink met while resolving `path` (and the paths they point to), so
    that the same unresolved path works in the job's root, where only real paths are bound."""
    if depth > 16:
        raise SetupError(f"too many levels of symbolic links in {path}")
    current = "/"
    for part in path.strip("/").split("/"):
        step = os.path.join(current, part)
        if os.path.islink(step):
            target = os.readlink(step)
            found.append((step, "symlink", target))
            _symlinks_on(os.path.normpath(os.path.join(current, target)), found, depth + 1)
            current = os.path.realpath(step)
        else:
            current = step


def _root_plan(scratch: str, expose: list[str], links: list[str]) -> tuple[list[tuple[str, str, str]], list[str]]:
    """What the job's root holds: (entries to create, host paths to bind at the same place).

    Exposed paths (real paths: the interpreter's prefixes, the job's script, `readable` paths)
    are bound unless a bound ancestor already shows them; the scratch dir is always bound (it
    becomes the one writable place). The symlinks on the way to each of `links` (argv[0] as the
    caller spelled it) are recreated. Binds are ordered parents first."""
    entries: list[tuple[str, str, str]] = [(d, "dir", "") for d in EMPTY_DIRS]
    for path in links:
        _symlinks_on(path, entries)
    entries += [(path, "file", data) for path, data in GENERATED_FILES.items()]
    binds: list[str] = []
    for top in SYSTEM_DIRS:
        if os.path.islink(top):
            entries.append((top, "symlink", os.readlink(top)))
        elif os.path.isdir(top):
            binds.append(top)
    for path in (*SYSTEM_FILES, *SYSTEM_READONLY_DIRS, *DEVICES):
        if os.path.exists(path):
            binds.append(os.path.realpath(path) if path in SYSTEM_FILES else path)
            if path in SYSTEM_FILES and os.path.realpath(path) != path:
                entries.append((path, "symlink", os.path.realpath(path)))
    for path in sorted(set(expose), key=lambda p: (p.count("/"), p)):
        covered = any(path == b or path.startswith(b.rstrip("/") + "/") for b in binds)
        if path == scratch or not covered:
            binds.append(path)
    return entries, binds


def _bind_readonly_tree(newroot: str, entries: list[tuple[str, str, str]], binds: list[str]) -> None:
    """Create `entries` and bind each of `binds` at the same path under `newroot`."""
    _create_as_inner_user(newroot, entries)
    for path in binds:
        _create_as_inner_user(newroot, [(path, "dir" if os.path.isdir(path) else "file", "")])
        _mount(path, newroot + path, None, MS_BIND | MS_REC)


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


def _setup_filesystem(scratch: str, expose: list[str], links: list[str], newroot: str) -> None:
    """Give the job a root of its own: a tmpfs at `newroot` (an empty directory only the
    launcher can reach) holding the system directories, the exposed paths and the scratch dir,
    bound from the host; a fresh /proc; then pivot_root into it and detach the host's tree.
    Everything is read-only except the scratch dir."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", newroot, "tmpfs", MS_NOSUID | MS_NODEV, f"size=1m,mode=0755,uid={INNER_ID},gid={INNER_ID}")
    entries, binds = _root_plan(scratch, expose, links)
    _bind_readonly_tree(newroot, entries, binds)
    # A fresh /proc shows only this pid namespace. It is mounted before the host's /proc goes
    # away: the kernel lets a user namespace mount proc only where one is fully visible.
    _mount("proc", newroot + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.chdir(newroot)
    _check(_libc.syscall(_pivot_root_number(), b".", b"."), "pivot_root")
    # The host's root now sits on top of ours at "/"; detaching it leaves only the job's root.
    _check(_libc.umount2(b".", ctypes.c_int(MNT_DETACH)), "umount host root")
    os.chdir("/")
    _mount_setattr("/", AT_RECURSIVE, MOUNT_ATTR_RDONLY)
    # The scratch dir is the one writable place (a new bind mount, then its read-only bit cleared).
    _mount(scratch, scratch, None, MS_BIND)
    _mount_setattr(scratch, 0, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC, attr_clr=MOUNT_ATTR_RDONLY)


def _pivot_root_number() -> int:
    try:
        return SYS_PIVOT_ROOT[os.uname().machine]
    except KeyError:
        raise SetupError(f"no pivot_root syscall number for {os.uname().machine}") from None


def _install_seccomp() -> None:
    """Refuse socket(AF_UNIX, ...) with EACCES: the job has no business with unix sockets (its
    channels to the platform, if any, are inherited socketpairs). Other calling conventions
    (x32, a foreign architecture's syscall entry) are refused outright, so the rule can't be
    sidestepped by another syscall table. no_new_privs is already set."""
    arch, socket_nr = SECCOMP_ARCH.get(os.uname().machine, (None, None))
    if arch is None or socket_nr is None:
        raise SetupError(f"no seccomp rule for {os.uname().machine}")
    ld_w_abs = BPF_LD | BPF_W | BPF_ABS
    jeq = BPF_JMP | BPF_JEQ | BPF_K
    jge = BPF_JMP | BPF_JGE | BPF_K
    ret = BPF_RET | BPF_K
    program = [
        (ld_w_abs, 0, 0, 4),  # seccomp_data.arch
        (jeq, 1, 0, arch),
        (ret, 0, 0, SECCOMP_RET_KILL_PROCESS),
        (ld_w_abs, 0, 0, 0),  # seccomp_data.nr
        (jge, 3, 0, X32_SYSCALL_BIT),
        (jeq, 0, 3, socket_nr),
        (ld_w_abs, 0, 0, 16),  # low 32 bits of args[0] (little-endian): the address family
        (jeq, 0, 1, AF_UNIX),
        (ret, 0, 0, SECCOMP_RET_ERRNO | EACCES),
        (ret, 0, 0, SECCOMP_RET_ALLOW),
    ]
    filters = (_SockFilter * len(program))(*(_SockFilter(*insn) for insn in program))
    prog = _SockFprog(len(program), filters)
    _check(
        _libc.prctl(
            ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(prog),
            ctypes.c_ulong(0), ctypes.c_ulong(0),
        ),
        "seccomp",
    )


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
        _setup_filesystem(config["scratch"], config["expose"], config["links"], config["newroot"])
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
            _install_seccomp()
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
