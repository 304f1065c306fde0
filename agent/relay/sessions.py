"""One relayed session on the agent: a command run in the job's container (exec), or a connection
to a port on the job's own loopback (port), joined to its frames on the channel.

Output goes out only against credit (the coordinator returns it as the client reads), so a
slow client stops the reads from the engine instead of filling memory; input is written to the
command or the connection before its credit is returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from agent.engine import Engine, EngineError
from agent.engine.exec import ExecStream, create_exec, exec_exit_code, resize_exec, start_exec
from agent.relay.netns import connect_in_job
from shared.errors import SuanliError
from shared.messages import relay

log = logging.getLogger(__name__)
Send = Callable[[relay.Frame], Awaitable[None]]
INBOX_LIMIT = 2 * relay.WINDOW  # input bytes queued past this: the coordinator broke the credit


@dataclass(eq=False)
class AgentSession:
    number: int
    send: Send
    inbox: asyncio.Queue[relay.Frame] = field(default_factory=asyncio.Queue)
    inbox_bytes: int = 0
    credit: int = relay.WINDOW
    credit_changed: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False

    def deliver(self, frame: relay.Frame) -> None:
        """A frame from the coordinator for this session."""
        if isinstance(frame, relay.Ack):
            self.credit = min(relay.WINDOW, self.credit + frame.size)
            self.credit_changed.set()
            return
        if isinstance(frame, relay.Data):
            self.inbox_bytes += len(frame.data)
        if isinstance(frame, relay.Close) or self.inbox_bytes > INBOX_LIMIT:
            self.closed = True
            self.credit_changed.set()
        self.inbox.put_nowait(frame)

    async def send_output(self, data: bytes, stream: relay.Stream) -> None:
        for piece in relay.chunks(data):
            if not piece:
                continue
            while self.credit < len(piece) and not self.closed:
                self.credit_changed.clear()
                await self.credit_changed.wait()
            if self.closed:
                return
            self.credit -= len(piece)
            await self.send(relay.Data(self.number, piece, stream))

    async def next_input(self) -> relay.Frame:
        frame = await self.inbox.get()
        if isinstance(frame, relay.Data):
            self.inbox_bytes -= len(frame.data)
        return frame


async def run_exec(
    session: AgentSession, engine: Engine, container_id: str, opened: relay.Open
) -> str:
    """Run the command until it ends (its exit code sent) or the session closes; the reason."""
    exec_id = await create_exec(
        engine, container_id, opened.argv, tty=opened.tty, stdin=opened.stdin
    )
    stream = await start_exec(engine, exec_id, tty=opened.tty)
    if opened.tty:
        with contextlib.suppress(EngineError):
            await resize_exec(engine, exec_id, opened.rows, opened.cols)
    feeding = asyncio.create_task(_feed_exec(session, engine, exec_id, stream))
    try:
        while (piece := await stream.read()) is not None:
            await session.send_output(piece[1], relay.STDERR if piece[0] == 2 else relay.STDOUT)
            if session.closed:
                return "closed"
        code = await exec_exit_code(engine, exec_id)
        await session.send(relay.Exit(session.number, -1 if code is None else code))
        return ""
    finally:
        feeding.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await feeding
        stream.close()


async def _feed_exec(
    session: AgentSession, engine: Engine, exec_id: str, stream: ExecStream
) -> None:
    while True:
        frame = await session.next_input()
        match frame:
            case relay.Data():
                await stream.write(frame.data)
                if frame.data:
                    await session.send(relay.Ack(session.number, len(frame.data)))
            case relay.Eof():
                stream.end_input()
            case relay.Resize():
                with contextlib.suppress(EngineError):
                    await resize_exec(engine, exec_id, frame.rows, frame.cols)
            case relay.Close():
                stream.close()
                return


async def run_port(
    session: AgentSession,
    pid: int,
    opened: relay.Open,
    still_its: Callable[[], Awaitable[bool]] | None = None,
) -> str:
    """Join the session to a connection to the job's own 127.0.0.1:port until either ends."""
    assert opened.port is not None
    sock = await connect_in_job(pid, opened.port, still_its)
    reader, writer = await asyncio.open_connection(sock=sock)
    feeding = asyncio.create_task(_feed_port(session, writer))
    try:
        while data := await reader.read(relay.MAX_DATA):
            await session.send_output(data, relay.STDOUT)
            if session.closed:
                return "closed"
        await session.send(relay.Eof(session.number))
        return ""
    finally:
        feeding.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await feeding
        writer.close()


async def _feed_port(session: AgentSession, writer: asyncio.StreamWriter) -> None:
    while True:
        frame = await session.next_input()
        match frame:
            case relay.Data():
                writer.write(frame.data)
                await writer.drain()
                if frame.data:
                    await session.send(relay.Ack(session.number, len(frame.data)))
            case relay.Eof():
                if writer.can_write_eof():
                    writer.write_eof()
            case relay.Close():
                return


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, SuanliError):
        return exc.detail
    return f"the agent could not run the session ({type(exc).__name__})"
