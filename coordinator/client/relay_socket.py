"""The client's end of a relayed session: one WebSocket to the coordinator carrying the frames of
`shared.messages.relay` (session 0), and the pieces the commands join to it: the local stdin
read on a thread of its own (so a terminal read never holds up the exit), a terminal in raw
mode and its size."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence

import aiohttp
import msgspec
from multidict import MultiDict

from coordinator.client.api import CoordinatorApi
from shared.http_client import BadAnswer, CoordinatorError, Refused
from shared.messages import relay
from shared.websocket_client import open_websocket

UPGRADE_REQUIRED = "upgrade_required"


async def open_session(
    api: CoordinatorApi, path: str, query: Mapping[str, str | Sequence[str]]
) -> aiohttp.ClientWebSocketResponse:
    """A WebSocket for one session. A refused upgrade is asked about again as a plain request,
    whose answer says why in a sentence (or leads to the leader, where the upgrade is tried
    once more)."""
    for _ in range(2):
        try:
            return await open_websocket(api, path, query, max_msg_size=relay.MAX_FRAME)
        except aiohttp.WSServerHandshakeError as exc:
            status = exc.status
        try:
            await api.request("GET", path, query=_flat(query))
        except Refused as refusal:
            if refusal.error != UPGRADE_REQUIRED:
                raise
    raise CoordinatorError(f"the coordinator at {api.url} refused the WebSocket ({status})")


def _flat(query: Mapping[str, str | Sequence[str]]) -> MultiDict[str]:
    return MultiDict(
        (name, item)
        for name, value in query.items()
        for item in ([value] if isinstance(value, str) else value)
    )


async def send(ws: aiohttp.ClientWebSocketResponse, frame: relay.Frame) -> None:
    await ws.send_bytes(relay.encode(frame))


async def frames(ws: aiohttp.ClientWebSocketResponse) -> relay.AnyFrame | None:
    """The next frame from the coordinator; None once the WebSocket has closed."""
    while True:
        message = await ws.receive()
        if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            return None
        if message.type == aiohttp.WSMsgType.ERROR:
            raise BadAnswer(f"the relay connection failed: {ws.exception()}")
        if message.type != aiohttp.WSMsgType.BINARY:
            continue
        try:
            return relay.decode(message.data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise BadAnswer(f"the coordinator sent a malformed relay frame: {exc}") from None


def read_stdin(fd: int, loop: asyncio.AbstractEventLoop) -> asyncio.Queue[bytes]:
    """Pieces of `fd` as they are read, b"" at its end, on a daemon thread that waits while
    the queue is full (so a slow session slows the reading, and no more is held)."""
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=16)

    def pump() -> None:
        while True:
            try:
                data = os.read(fd, relay.MAX_DATA)
            except OSError:
                data = b""
            try:
                asyncio.run_coroutine_threadsafe(queue.put(data), loop).result()
            except BaseException:  # noqa: BLE001 - the session (and its loop) ended first
                return
            if not data:
                return

    threading.Thread(target=pump, name="stdin", daemon=True).start()
    return queue


def terminal_size() -> tuple[int, int]:
    size = shutil.get_terminal_size((80, 24))
    return max(1, size.lines), max(1, size.columns)


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[bool]:
    """Put the terminal on `fd` in raw mode for the block (yields whether it is a terminal)."""
    if not os.isatty(fd):
        yield False
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def write_out(stream: int, data: bytes) -> None:
    target = sys.stderr.buffer if stream == relay.STDERR else sys.stdout.buffer
    target.write(data)
    target.flush()
