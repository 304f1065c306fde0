"""Hosts made of network namespaces for egress tests: an "internet" host in the RFC 2544
benchmarking range 198.18.0.0/15, a "LAN" host in a private range that also answers on the
metadata address 169.254.169.254, each behind a veth pair routed from this host, each running
a TCP server that answers one line. Everything carries a random tag and is removed on exit,
failure included; a missing `ip` or a non-root user skips (fails under CI=true)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from engines import unavailable

PORT = 8081
METADATA = "169.254.169.254"
# One line per connection, then close: enough for `nc` to tell "reached" from "not".
_SERVER = """
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1]))); srv.listen(16)
while True:
    conn, _ = srv.accept()
    with conn:
        conn.sendall(sys.argv[2].encode() + b"\\n")
"""
# A resolver for the internet host: every A query answered with the host's own address.
_DNS = """
import socket, sys
address = socket.inet_aton(sys.argv[1])
srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); srv.bind(("0.0.0.0", 53))
while True:
    query, peer = srv.recvfrom(512)
    end = 12
    while end < len(query) and query[end]:
        end += query[end] + 1
    qtype = query[end + 1 : end + 3]
    answers = b"\\x00\\x01" if qtype == b"\\x00\\x01" else b"\\x00\\x00"
    head = query[:2] + b"\\x81\\x80\\x00\\x01" + answers + b"\\x00\\x00\\x00\\x00"
    body = query[12 : end + 5]
    if qtype == b"\\x00\\x01":
        body += b"\\xc0\\x0c\\x00\\x01\\x00\\x01\\x00\\x00\\x00\\x3c\\x00\\x04" + address
    srv.sendto(head + body, peer)
"""


def ip(*args: str) -> None:
    run = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {run.stderr.strip()}")


@dataclass
class Host:
    """One namespace: its address, the host side's address, its server's process."""

    name: str
    address: str
    host_side: str
    link: str  # the host side of its veth pair
    server: subprocess.Popen[bytes] | None = None
    resolver: subprocess.Popen[bytes] | None = None

    def run(self, *argv: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def connects(self, address: str, port: int, timeout_s: float = 2.0) -> bool:
        """Whether a TCP connection from this namespace to address:port is accepted."""
        probe = (
            "import socket,sys\n"
            f"s=socket.socket(); s.settimeout({timeout_s})\n"
            f"sys.exit(0 if s.connect_ex(({address!r}, {port})) == 0 else 1)\n"
        )
        return self.run(sys.executable, "-c", probe, timeout=timeout_s + 10).returncode == 0


@dataclass
class World:
    internet: Host
    lan: Host
    host_server_port: int


class _HostServer:
    """A server on every address of this host, which no job may reach."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.sendall(b"host\n")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def _make(made: list[Host], tag: str, role: str, address: str, host_side: str, prefix: int) -> Host:
    name = f"sl-{role}-{tag}"
    outside, inside = f"sl{role[0]}{tag}h", f"sl{role[0]}{tag}n"
    host = Host(name, address, host_side, outside)
    ip("netns", "add", name)
    made.append(host)
    ip("link", "add", outside, "type", "veth", "peer", "name", inside, "netns", name)
    ip("addr", "add", f"{host_side}/{prefix}", "dev", outside)
    ip("link", "set", outside, "up")
    ip("-n", name, "addr", "add", f"{address}/{prefix}", "dev", inside)
    ip("-n", name, "link", "set", inside, "up")
    ip("-n", name, "link", "set", "lo", "up")
    ip("-n", name, "route", "add", "default", "via", host_side)
    return host


def _serve_in(host: Host, banner: str) -> None:
    host.server = subprocess.Popen(
        ["ip", "netns", "exec", host.name, sys.executable, "-c", _SERVER, str(PORT), banner],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not host.connects(host.address, PORT, 0.5):
        if time.monotonic() > deadline or host.server.poll() is not None:
            raise RuntimeError(f"the server in {host.name} did not start")
        time.sleep(0.05)


@contextlib.contextmanager
def world() -> Iterator[World]:
    """The internet host (198.18.<n>.2, with a resolver on port 53), the LAN host
    (10.77.<n>.2 and 169.254.169.254) and a server on this host; all removed afterwards."""
    if os.geteuid() != 0:
        unavailable("network namespace tests need root")
    if shutil.which("ip") is None:
        unavailable("network namespace tests need ip (iproute2)")
    tag = secrets.token_hex(3)
    n = str(secrets.randbelow(200) + 20)
    hosts: list[Host] = []
    server = _HostServer()
    try:
        internet = _make(hosts, tag, "inet", f"198.18.{n}.2", f"198.18.{n}.1", 24)
        lan = _make(hosts, tag, "lan", f"10.77.{n}.2", f"10.77.{n}.1", 24)
        ip("-n", lan.name, "addr", "add", f"{METADATA}/32", "dev", "lo")
        ip("route", "add", f"{METADATA}/32", "via", lan.address)
        _serve_in(internet, "internet")
        _serve_in(lan, "lan")
        internet.resolver = subprocess.Popen(
            ["ip", "netns", "exec", internet.name, sys.executable, "-c", _DNS, internet.address],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        yield World(internet, lan, server.port)
    finally:
        server.close()
        with contextlib.suppress(RuntimeError):
            ip("route", "del", f"{METADATA}/32")
        for host in hosts:
            for process in (host.server, host.resolver):
                if process is not None:
                    process.kill()
                    process.wait()
            with contextlib.suppress(RuntimeError):
                ip("link", "del", host.link)  # now, not when the kernel frees the namespace
            with contextlib.suppress(RuntimeError):
                ip("netns", "del", host.name)


def leftovers(tag_prefix: str = "sl-") -> list[str]:
    """Namespaces of these tests still present (for the clean-up assertions)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in listed.stdout.splitlines() if line.startswith(tag_prefix)]
