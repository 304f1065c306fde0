"""A command run inside a job's container through the engine's exec API, with its streams.

`POST /containers/{id}/exec` makes the exec (never privileged, as the container's own user, so
it has no more than the job: the capabilities, no-new-privileges and limits are the
container's), `POST /exec/{id}/start` hijacks the connection for its stdin and output (raw with
a terminal, Docker's multiplexed frames without), `/exec/{id}/resize` sizes its terminal and
`/exec/{id}/json` has its exit code. Docker and Podman 4.3's compatible API behave the same;
both end the command's stdin on a one-sided close of the hijacked connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from dataclasses import dataclass
from typing import Any

from agent.engine.api import EngineApi
from agent.engine.errors import ContainerNotFound, EngineError

START_TIMEOUT_S = 30.0
_HEADER_LIMIT = 16 * 1024
_STREAMS = {0: 0, 1: 1, 2: 2}


async def create_exec(
    engine: EngineApi, container_id: str, argv: list[str], *, tty: bool, stdin: bool
) -> str:
    """Make an exec of `argv` in the running container; its id."""
    _, body = await engine._container_call("GET", container_id, "/json")
    document = json.loads(body)
    if not (document.get("State") or {}).get("Running"):
        raise ContainerNotFound(f"the container {container_id} is not running")
    user = (document.get("Config") or {}).get("User") or ""
    request = {
        "AttachStdin": stdin,
        "AttachStdout": True,
        "AttachStderr": True,
        "Tty": tty,
        "Cmd": argv,
        "Privileged": False,
        "User": user,
        "Env": ["TERM=xterm"] if tty else [],
    }
    _, answer = await engine._container_call("POST", container_id, "/exec", ok=(201,), json=request)
    return str(json.loads(answer)["Id"])


@dataclass
class ExecStream:
    """The hijacked connection of a started exec: write stdin, read (stream, bytes) pieces."""

    exec_id: str
    tty: bool
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def read(self) -> tuple[int, bytes] | None:
        """The next piece of output as (1 stdout or 2 stderr, bytes); None at the end."""
        if self.tty:
            data = await self.reader.read(64 * 1024)
            return (1, data) if data else None
        try:
            header = await self.reader.readexactly(8)
        except asyncio.IncompleteReadError:
            return None
        kind, size = header[0], struct.unpack(">I", header[4:])[0]
        if kind not in _STREAMS or size > 16 << 20:
            raise EngineError(f"an exec stream has a malformed frame header {header!r}")
        try:
            payload = await self.reader.readexactly(size)
        except asyncio.IncompleteReadError as exc:
            raise EngineError("an exec stream ended inside a frame") from exc
        return (2 if kind == 2 else 1), payload

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def end_input(self) -> None:
        """Close the command's stdin (a one-sided close of the connection)."""
        with contextlib.suppress(OSError, RuntimeError):
            if self.writer.can_write_eof():
                self.writer.write_eof()

    def close(self) -> None:
        self.writer.close()


async def start_exec(engine: EngineApi, exec_id: str, *, tty: bool) -> ExecStream:
    """Start the exec on a connection of its own, hijacked for its streams."""
    prefix = await engine._prefix()
    reader, writer = await asyncio.wait_for(
        asyncio.open_unix_connection(engine.socket_path, limit=1 << 20), START_TIMEOUT_S
    )
    body = json.dumps({"Detach": False, "Tty": tty}).encode()
    head = (
        f"POST {prefix}/exec/{exec_id}/start HTTP/1.1\r\nHost: engine\r\n"
        "Content-Type: application/json\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    try:
        writer.write(head + body)
        await writer.drain()
        status_line, headers = await asyncio.wait_for(_read_head(reader), START_TIMEOUT_S)
    except BaseException:
        writer.close()
        raise
    status = int(status_line.split(b" ")[1]) if status_line.count(b" ") >= 1 else 0
    if status not in (101, 200):
        rest = b""
        with contextlib.suppress(Exception):
            rest = await asyncio.wait_for(reader.read(4096), 2)
        writer.close()
        raise EngineError(f"the container engine refused to start the exec ({status}): {rest!r}")
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        writer.close()
        raise EngineError("the container engine answered the exec start without hijacking it")
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    return ExecStream(exec_id, tty, reader, writer)


async def _read_head(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    if len(raw) > _HEADER_LIMIT:
        raise EngineError("the container engine's answer to the exec start is too long")
    lines = raw.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name:
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


async def resize_exec(engine: EngineApi, exec_id: str, rows: int, cols: int) -> None:
    await engine._call(
        "POST", f"/exec/{exec_id}/resize?h={rows}&w={cols}", ok=(200, 201, 204, 409, 500)
    )


async def exec_exit_code(engine: EngineApi, exec_id: str) -> int | None:
    """The exec's exit code once it ended, else None."""
    for _ in range(50):
        _, body = await engine._call("GET", f"/exec/{exec_id}/json")
        document: dict[str, Any] = json.loads(body)
        if not document.get("Running") and document.get("ExitCode") is not None:
            return int(document["ExitCode"])
        await asyncio.sleep(0.1)
    return None
