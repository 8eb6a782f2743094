"""Test hosts made of Linux network namespaces (tests/integration/test_multihost.py).

A `TestHost` is a network namespace joined to the main one by a veth pair in a /24 of its own
inside 10.213.0.0/16 (the main side is .1, the host .2). Redis and PostgreSQL listen on 127.0.0.1
only, so each host gets a forwarder in the main namespace, bound to the host's .1 address only,
that relays TCP to 127.0.0.1 (`python -m tests.netns forward ...`): the machine's services are not
reconfigured and nothing else can reach them through the veth. Processes started "on" a host run
under `ip netns exec`; cutting its link is `ip link set <main-side veth> down`, as a cable pulled
at the switch (the host's packets are dropped, its connections hang rather than fail).

Every name carries a random tag, so concurrent runs never collide; `TestHosts.close()` removes
every process, veth and namespace it made, and a test calls it in a finally / fixture teardown.
Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN), as the suite has on this machine and in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tests import stack as stk

SUBNET = "10.213"


def ip(*args: str) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def _used_octets() -> set[int]:
    """Third octets of 10.213.x.0/24 already addressed or routed on this machine."""
    used = set()
    for line in (ip("-4", "-o", "addr") + ip("-4", "route")).splitlines():
        for word in line.replace("/", " ").split():
            if word.startswith(f"{SUBNET}."):
                used.add(int(word.split(".")[2]))
    return used


def with_netloc(url: str, host: str, port: int) -> str:
    """`url` with its host and port replaced (user, password, path and query kept)."""
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{auth}@{host}:{port}" if auth else f"{host}:{port}"))


@dataclass
class TestHost:
    name: str  # network namespace
    veth: str  # main-side end of the pair (the ns side is in the namespace)
    peer: str
    gateway: str  # main-side address: what the host dials for Redis and PostgreSQL
    address: str
    ports: dict[int, int] = field(default_factory=dict)  # target port on 127.0.0.1 -> forwarder port
    forwarder: stk.Proc | None = None
    procs: list[stk.Proc] = field(default_factory=list)

    __test__ = False  # not a pytest test class

    def url(self, url: str) -> str:
        """A loopback service URL as this host reaches it (through its forwarder)."""
        target = urlsplit(url).port
        assert target in self.ports, f"{url}: no forwarder for port {target}"
        return with_netloc(url, self.gateway, self.ports[target])

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> stk.Proc:
        proc = stk.start(f"{name}-{self.name}", ["ip", "netns", "exec", self.name, *argv], env)
        self.procs.append(proc)
        return proc

    def cut(self) -> None:
        ip("link", "set", self.veth, "down")

    def restore(self) -> None:
        ip("link", "set", self.veth, "up")


class TestHosts:
    """Creates test hosts; `close()` removes all of them (processes first, then links, then
    namespaces), whatever state a failed test left them in."""

    __test__ = False

    def __init__(self, *, forward: tuple[int, ...]) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.forward = forward
        self.hosts: list[TestHost] = []

    def add(self) -> TestHost:
        index = len(self.hosts)
        free = sorted(set(range(1, 255)) - _used_octets())
        assert free, f"no free /24 left in {SUBNET}.0.0/16"
        octet = free[int(self.tag, 16) % len(free)]
        host = TestHost(name=f"mpt-{self.tag}-{index}", veth=f"mpt{self.tag}h{index}", peer=f"mpt{self.tag}n{index}",
                        gateway=f"{SUBNET}.{octet}.1", address=f"{SUBNET}.{octet}.2")
        self.hosts.append(host)  # before creating anything: close() removes what exists
        ip("netns", "add", host.name)
        ip("link", "add", host.veth, "type", "veth", "peer", "name", host.peer)
        ip("link", "set", host.peer, "netns", host.name)
        ip("addr", "add", f"{host.gateway}/24", "dev", host.veth)
        ip("link", "set", host.veth, "up")
        ip("-n", host.name, "addr", "add", f"{host.address}/24", "dev", host.peer)
        ip("-n", host.name, "link", "set", host.peer, "up")
        ip("-n", host.name, "link", "set", "lo", "up")
        ports_file = stk.LOG_DIR / f"forward-{host.name}.json"
        ports_file.unlink(missing_ok=True)
        stk.LOG_DIR.mkdir(parents=True, exist_ok=True)
        host.forwarder = stk.start(f"forward-{host.name}", [
            sys.executable, "-m", "tests.netns", "forward", host.gateway, str(ports_file),
            *map(str, self.forward)], stk.process_env())
        deadline = time.monotonic() + 20
        while not ports_file.exists():
            if host.forwarder.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"forwarder for {host.name} did not start:\n{host.forwarder.log()}")
            time.sleep(0.05)
        host.ports = {int(k): v for k, v in json.loads(ports_file.read_text()).items()}
        return host

    def close(self) -> None:
        for host in self.hosts:
            for proc in host.procs:
                proc.stop(timeout=5)
            if host.forwarder is not None:
                host.forwarder.stop(timeout=5)
        for host in self.hosts:
            subprocess.run(["ip", "link", "del", host.veth], capture_output=True, timeout=10, check=False)
            subprocess.run(["ip", "netns", "del", host.name], capture_output=True, timeout=10, check=False)
        left = set(ip("netns", "list").split()) & {h.name for h in self.hosts}
        assert not left, f"namespaces left behind: {left}"


# --------------------------------------------------------------------------------------------
# The forwarder (runs in the main namespace, one process per test host)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _relay(target: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
    except OSError:
        writer.close()
        return
    await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _forward(listen: str, ports_file: Path, targets: list[int]) -> None:
    ports = {}
    for target in targets:
        server = await asyncio.start_server(lambda r, w, t=target: _relay(t, r, w), listen, 0)
        ports[target] = server.sockets[0].getsockname()[1]
    tmp = ports_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(ports))
    os.replace(tmp, ports_file)  # the test polls for the file: it appears complete
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.netns")
    sub = parser.add_subparsers(dest="command", required=True)
    fwd = sub.add_parser("forward", help="relay LISTEN:<ephemeral> to 127.0.0.1:TARGET for each TARGET")
    fwd.add_argument("listen")
    fwd.add_argument("ports_file", type=Path)
    fwd.add_argument("targets", nargs="+", type=int)
    args = parser.parse_args()
    asyncio.run(_forward(args.listen, args.ports_file, args.targets))


if __name__ == "__main__":
    main()
