"""A TCP connection to a port on a job's own loopback, made from inside its network namespace.

A job with network `none` has only its loopback, which the agent's host cannot reach. A small
helper process enters the container's network namespace (`nsenter --net`, nothing else: it
still sees the agent's files, so it needs nothing in the image), connects to 127.0.0.1:PORT
there, and hands the connected socket back over a socketpair (SCM_RIGHTS). The agent then
reads and writes it like any socket. The address is fixed to the job's own 127.0.0.1 and the
namespace is the job's: the helper cannot reach the provider's host or its network.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import Awaitable, Callable

from shared.errors import SuanliError

CONNECT_TIMEOUT_S = 10.0
_HELPER = f"""
import socket, sys
back = socket.socket(fileno=int(sys.argv[1]))
try:
    conn = socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout={CONNECT_TIMEOUT_S})
except OSError as exc:
    said = f"nothing answers on port {{sys.argv[2]}} inside the job ({{exc.strerror or exc}})"
    back.sendall(said.encode())
else:
    socket.send_fds(back, [b"ok"], [conn.fileno()])
"""


class PortUnreachable(SuanliError):
    """The job's port could not be connected to."""

    code = "port_unreachable"


async def connect_in_job(
    pid: int, port: int, still_its: Callable[[], Awaitable[bool]] | None = None
) -> socket.socket:
    """A socket connected to 127.0.0.1:`port` inside the network namespace of process `pid`.

    The namespace is held open first, then `still_its()` must confirm that `pid` is still the
    job's (a process id freed by the job's exit may be a host process's by now), and a
    namespace that is the agent's own is refused; the helper enters the namespace held, not
    whatever the id names by then."""
    if not 1 <= port <= 65535 or pid <= 0:
        raise PortUnreachable(f"port {port} or process {pid} is out of range")
    try:
        held = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        raise PortUnreachable("the job's process is gone") from None
    try:
        if os.fstat(held).st_ino == os.stat("/proc/self/ns/net").st_ino:
            raise PortUnreachable("the job's network is the host's; refused")
        if still_its is not None and not await still_its():
            raise PortUnreachable("the job's process is gone")
        return await _connect_through(held, port)
    finally:
        os.close(held)


async def _connect_through(held: int, port: int) -> socket.socket:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        process = await asyncio.create_subprocess_exec(
            "nsenter",
            f"--net=/proc/self/fd/{held}",
            "--",
            sys.executable,
            "-I",
            "-S",
            "-c",
            _HELPER,
            str(theirs.fileno()),
            str(port),
            pass_fds=(theirs.fileno(), held),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        theirs.close()
        ours.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            message, fds = await asyncio.wait_for(
                loop.run_in_executor(None, _receive, ours), CONNECT_TIMEOUT_S + 5
            )
        finally:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            _, err = await process.communicate()
        if not fds:
            said = message.decode(errors="replace") or err.decode(errors="replace").strip()
            raise PortUnreachable(said or f"could not connect to port {port} inside the job")
        return socket.socket(fileno=fds[0])
    finally:
        ours.close()
        theirs.close()


def _receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    sock.setblocking(True)
    message, fds, _, _ = socket.recv_fds(sock, 1024, 1)
    return message, fds
