"""The relay's switchboard: each agent's one channel, and the sessions multiplexed over it.

A session joins one client WebSocket to one session number on the channel of the agent that
runs the job. Frames from an agent are accepted only for the sessions opened on its own
channel; anything else is dropped and counted. Each direction is bounded by credit (the
agent may have `WINDOW` bytes in flight to a session, and so may the client through us), so a
slow reader holds back its own sender and no queue here grows past a window. Frames that carry
no bytes are bounded too: an agent's empty data is dropped, its exit and end-of-output taken
once, at most MAX_QUEUED frames wait for a client, and a client's resizes go on at most
RESIZES_PER_S a second (the latest one always arrives), its end-of-input once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import msgspec
from aiohttp import WSMsgType, web

from shared.messages import relay

log = logging.getLogger(__name__)

MAX_QUEUED = 16_384  # frames waiting for one slow client, whatever their size
RESIZES_PER_S = 20
SWEEP_S = 2.0  # how often each session's right to go on is checked


async def _always() -> str | None:
    return None


@dataclass(eq=False)
class AgentChannel:
    agent_id: str
    ws: web.WebSocketResponse
    sessions: dict[int, RelaySession] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    dropped: int = 0
    said_at: float = float("-inf")

    async def send(self, frame: relay.Frame) -> None:
        async with self.lock:
            await self.ws.send_bytes(relay.encode(frame))


@dataclass(eq=False)
class RelaySession:
    """One relayed shell, copy or port: its numbers, its credit and the frames for the client."""

    number: int
    record_id: str
    job_id: str
    lease_id: str
    channel: AgentChannel
    byte_limit: int
    idle_s: float
    to_client: asyncio.Queue[relay.Frame] = field(default_factory=asyncio.Queue)
    credit_to_agent: int = relay.WINDOW
    credit_changed: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight_from_agent: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    exit_code: int | None = None
    reason: str = ""
    closed: bool = False
    agent_closed: bool = False
    last_activity: float = 0.0
    agent_eof: bool = False
    client_eof: bool = False
    latest_resize: tuple[int, int] | None = None
    resizer: asyncio.Task[None] | None = None
    # why the session may not go on (its lease ended, its agent or token revoked), or None
    still_allowed: Callable[[], Awaitable[str | None]] = _always

    def over_limit(self) -> bool:
        return self.bytes_in + self.bytes_out > self.byte_limit

    def touch(self) -> None:
        self.last_activity = asyncio.get_running_loop().time()

    def end(self, reason: str) -> None:
        """Stop the session with this reason (the first reason given is kept)."""
        if not self.closed:
            self.closed = True
            self.reason = self.reason or reason
        self.credit_changed.set()
        self.to_client.put_nowait(relay.Close(relay.CLIENT_SESSION, self.reason))


class RelayHub:
    def __init__(self) -> None:
        self.channels: dict[str, AgentChannel] = {}
        self.by_job: dict[str, set[RelaySession]] = {}
        self.dropped_frames = 0
        self._numbers = 0

    async def sweep(self) -> None:
        """End, every SWEEP_S, each session whose lease has ended or whose agent or token was
        revoked: a session is authorised at its start and must stay so."""
        while True:
            await asyncio.sleep(SWEEP_S)
            for sessions in list(self.by_job.values()):
                for session in list(sessions):
                    try:
                        reason = await session.still_allowed()
                    except Exception as exc:  # a check that fails ends the session
                        reason = f"the session could not be checked ({exc})"
                    if reason is not None:
                        session.end(reason)

    def sessions_of(self, job_id: str) -> int:
        return len(self.by_job.get(job_id, ()))

    def new_number(self) -> int:
        self._numbers = self._numbers % (2**31) + 1
        return self._numbers

    # -- the agent's side -------------------------------------------------------------

    async def serve_agent(self, agent_id: str, ws: web.WebSocketResponse) -> None:
        """Read an agent's channel until it closes; a newer channel of the same agent replaces
        this one (and ends its sessions)."""
        channel = AgentChannel(agent_id, ws)
        old = self.channels.get(agent_id)
        self.channels[agent_id] = channel
        if old is not None:
            self._end_channel(old, "the agent opened a new channel")
            await old.ws.close()
        try:
            async for message in ws:
                if message.type != WSMsgType.BINARY:
                    self._drop(channel, "a frame that is not binary")
                    continue
                self._from_agent(channel, message.data)
        finally:
            if self.channels.get(agent_id) is channel:
                del self.channels[agent_id]
            if channel.dropped:
                log.warning(
                    "relay: agent %s's channel closed; %d of its frames were dropped",
                    agent_id,
                    channel.dropped,
                )
            self._end_channel(channel, "the agent's channel closed")

    def _end_channel(self, channel: AgentChannel, reason: str) -> None:
        for session in list(channel.sessions.values()):
            session.agent_closed = True
            session.end(reason)

    def _drop(self, channel: AgentChannel, what: str) -> None:
        """Count a frame the agent had no right to send; said at most once a second."""
        self.dropped_frames += 1
        channel.dropped += 1
        now = asyncio.get_running_loop().time()
        if now - channel.said_at >= 1.0:
            channel.said_at = now
            log.warning(
                "relay: dropped %s from agent %s (%d of its frames dropped so far)",
                what,
                channel.agent_id,
                channel.dropped,
            )

    def _from_agent(self, channel: AgentChannel, message: bytes) -> None:
        try:
            frame = relay.decode(message)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            self._drop(channel, f"a malformed frame ({exc})")
            return
        session = channel.sessions.get(frame.session)
        if session is None or session.agent_closed:
            self._drop(channel, f"a frame for session {frame.session} it was not given")
            return
        session.touch()
        match frame:
            case relay.Data() if not frame.data:
                return
            case relay.Data() | relay.Exit() | relay.Eof() if (
                session.to_client.qsize() >= MAX_QUEUED
            ):
                session.end("the client reads too slowly for what the job sends")
            case relay.Data():
                size = len(frame.data)
                session.in_flight_from_agent += size
                session.bytes_out += size
                if session.in_flight_from_agent > relay.WINDOW:
                    self._drop(channel, "data beyond its credit")
                    session.end("the agent sent more than the session's window")
                elif session.over_limit():
                    session.end(f"the session carried more than {session.byte_limit} bytes")
                else:
                    session.to_client.put_nowait(
                        relay.Data(relay.CLIENT_SESSION, frame.data, frame.stream)
                    )
            case relay.Ack():
                session.credit_to_agent = min(relay.WINDOW, session.credit_to_agent + frame.size)
                session.credit_changed.set()
            case relay.Exit() if session.exit_code is not None:
                self._drop(channel, "a second exit for one session")
            case relay.Exit():
                session.exit_code = frame.code
                session.to_client.put_nowait(relay.Exit(relay.CLIENT_SESSION, frame.code))
            case relay.Close():
                session.agent_closed = True
                session.end(frame.reason)
            case relay.Eof() if not session.agent_eof:
                session.agent_eof = True
                session.to_client.put_nowait(relay.Eof(relay.CLIENT_SESSION))
            case relay.Eof():
                self._drop(channel, "a second end of output for one session")
            case _:
                self._drop(channel, f"a {type(frame).__name__} frame, which agents never send")

    # -- the client's side ------------------------------------------------------------

    def attach(self, session: RelaySession) -> None:
        session.channel.sessions[session.number] = session
        self.by_job.setdefault(session.job_id, set()).add(session)
        session.touch()

    def detach(self, session: RelaySession) -> None:
        session.channel.sessions.pop(session.number, None)
        sessions = self.by_job.get(session.job_id)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self.by_job[session.job_id]

    async def relay(
        self, session: RelaySession, open_frame: relay.Open, client: web.WebSocketResponse
    ) -> None:
        """Run a session until either side ends it; the agent is told to close it."""
        channel = session.channel
        await channel.send(open_frame)
        upstream = asyncio.create_task(self._client_to_agent(session, client))
        downstream = asyncio.create_task(self._agent_to_client(session, client))
        try:
            await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            session.end("the client closed the session")
            if session.resizer is not None:
                session.resizer.cancel()
            for task in (upstream, downstream):
                if not task.done():
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if not session.agent_closed and self.channels.get(channel.agent_id) is channel:
                with contextlib.suppress(Exception):
                    await channel.send(relay.Close(session.number, session.reason))
            self.detach(session)
            with contextlib.suppress(Exception):
                await client.close()

    async def _client_to_agent(self, session: RelaySession, client: web.WebSocketResponse) -> None:
        channel = session.channel
        async for message in client:
            if session.closed:
                return
            if message.type != WSMsgType.BINARY:
                session.end("the client sent a frame that is not binary")
                return
            try:
                frame = relay.decode(message.data)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                session.end(f"the client sent a malformed frame: {exc}")
                return
            session.touch()
            match frame:
                case relay.Data():
                    size = len(frame.data)
                    while session.credit_to_agent < size and not session.closed:
                        session.credit_changed.clear()
                        await session.credit_changed.wait()
                    session.credit_to_agent -= size
                    session.bytes_in += size
                    if session.over_limit():
                        session.end(f"the session carried more than {session.byte_limit} bytes")
                        return
                    await channel.send(relay.Data(session.number, frame.data, relay.STDIN))
                case relay.Resize():
                    session.latest_resize = (frame.rows, frame.cols)
                    if session.resizer is None or session.resizer.done():
                        session.resizer = asyncio.create_task(self._send_resizes(session))
                case relay.Eof() if not session.client_eof:
                    session.client_eof = True
                    await channel.send(relay.Eof(session.number))
                case relay.Eof():
                    pass
                case relay.Close():
                    return
                case _:
                    session.end(f"the client sent a {type(frame).__name__} frame")
                    return

    @staticmethod
    async def _send_resizes(session: RelaySession) -> None:
        """The client's latest terminal size, at most RESIZES_PER_S times a second."""
        while session.latest_resize is not None and not session.closed:
            rows, cols = session.latest_resize
            session.latest_resize = None
            await session.channel.send(relay.Resize(session.number, rows, cols))
            await asyncio.sleep(1 / RESIZES_PER_S)

    async def _agent_to_client(self, session: RelaySession, client: web.WebSocketResponse) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                frame = await asyncio.wait_for(session.to_client.get(), timeout=session.idle_s / 4)
            except TimeoutError:
                if loop.time() - session.last_activity > session.idle_s:
                    session.end(f"the session was idle for {session.idle_s:.0f} s")
                continue
            if isinstance(frame, relay.Close):
                with contextlib.suppress(Exception):
                    await client.send_bytes(
                        relay.encode(relay.Close(relay.CLIENT_SESSION, session.reason))
                    )
                return
            await client.send_bytes(relay.encode(frame))
            if isinstance(frame, relay.Data) and frame.data:
                session.in_flight_from_agent -= len(frame.data)
                if not session.agent_closed:
                    await session.channel.send(relay.Ack(session.number, len(frame.data)))
