"""The agent's one relay channel: a WebSocket the agent opens to the coordinator (providers sit
behind NAT, so the coordinator never dials in), over which it runs the sessions the
coordinator opens for the jobs of its own running leases.

The channel is kept open whenever the agent runs, not only while it holds leases: an idle
WebSocket costs a ping every 20 s, and a shell asked for the moment a job starts finds the
channel there instead of waiting for one to be dialled. The upgrade carries a signed request
(shared.signed_request, the same envelope every agent request uses) in a header, checked by
the coordinator over its exact bytes with the same nonces and floors, and signed afresh for
each connection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Protocol

import aiohttp
import msgspec

from agent.backoff import Backoff
from agent.coordinator_client import CoordinatorClient
from agent.engine import Engine
from agent.relay.sessions import AgentSession, Send, failure_reason, run_exec, run_port
from agent.runner import LeaseRunner
from shared.clock import now_ms
from shared.errors import SuanliError
from shared.messages import relay
from shared.signed_request import sign_request
from shared.websocket_client import open_websocket

log = logging.getLogger(__name__)

AGENT_PATH = "/v1/agent/relay"
SIGNED_HEADER = "X-Suanli-Signed-Request"
MAX_SESSIONS = 64  # at once on this agent, whatever the coordinator asks


ContainerOf = Callable[[str], str | None]


class Host(Protocol):
    @property
    def client(self) -> CoordinatorClient: ...
    @property
    def engine(self) -> Engine: ...
    @property
    def runners(self) -> Mapping[str, LeaseRunner]: ...


def channel_of(daemon: Host) -> RelayChannel:
    """The channel of a daemon, for the containers of its running leases."""

    def running_container(lease_id: str) -> str | None:
        runner = daemon.runners.get(lease_id)
        if runner is None:
            return None
        run = runner.record.container
        if run.started_at_ms is None or run.ended_at_ms is not None:
            return None
        return run.container_id

    return RelayChannel(daemon.client, daemon.engine, running_container)


class RelayChannel:
    def __init__(
        self, client: CoordinatorClient, engine: Engine, container_of: ContainerOf
    ) -> None:
        self.client = client
        self.engine = engine
        self.container_of = container_of
        self.sessions: dict[int, AgentSession] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.connected = asyncio.Event()

    async def run(self) -> None:
        """Keep the channel open, reconnecting with backoff (to the next coordinator URL after a
        refusal, so a standby sends the agent on to the leader)."""
        backoff = Backoff(first_s=0.5, max_s=15.0)
        while True:
            try:
                await self._connect_and_serve()
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except aiohttp.WSServerHandshakeError as exc:
                log.warning("the coordinator refused the relay channel (%s)", exc.status)
                self.client.next_url()
            except (SuanliError, aiohttp.ClientError, OSError) as exc:
                log.warning("the relay channel failed: %s", exc)
            finally:
                self.connected.clear()
                self._end_all()
            await asyncio.sleep(backoff.next_delay())

    async def _connect_and_serve(self) -> None:
        envelope = sign_request(self.client.key, "GET", AGENT_PATH, {}, now_ms())
        headers = {SIGNED_HEADER: base64.b64encode(envelope).decode()}
        ws = await open_websocket(
            self.client, AGENT_PATH, headers=headers, max_msg_size=relay.MAX_FRAME
        )
        lock = asyncio.Lock()

        async def send(frame: relay.Frame) -> None:
            async with lock:
                await ws.send_bytes(relay.encode(frame))

        self.connected.set()
        log.info("relay channel open to %s", self.client.url)
        try:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.BINARY:
                    continue
                try:
                    frame = relay.decode(message.data)
                except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                    log.warning("relay: dropped a malformed frame from the coordinator: %s", exc)
                    continue
                self._dispatch(frame, send)
        finally:
            await ws.close()

    def _dispatch(self, frame: relay.AnyFrame, send: Send) -> None:
        if isinstance(frame, relay.Open):
            if frame.session in self.sessions:
                return
            session = AgentSession(frame.session, send)
            self.sessions[frame.session] = session
            task = asyncio.create_task(self._run_session(session, frame))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        found = self.sessions.get(frame.session)
        if found is not None:
            found.deliver(frame)

    async def _run_session(self, session: AgentSession, opened: relay.Open) -> None:
        reason = ""
        try:
            if len(self.sessions) > MAX_SESSIONS:
                reason = f"this agent already runs {MAX_SESSIONS} sessions"
                return
            container_id = self.container_of(opened.lease_id)
            if container_id is None:
                reason = f"this agent runs no container for lease {opened.lease_id} now"
                return
            if opened.kind == "exec":
                reason = await run_exec(session, self.engine, container_id, opened)
            else:
                state = await self.engine.state(container_id)

                async def still_its() -> bool:
                    now = await self.engine.state(container_id)
                    return now.running and now.pid == state.pid

                reason = await run_port(session, state.pid, opened, still_its)
        except asyncio.CancelledError:
            reason = "the agent is stopping"
            raise
        except Exception as exc:  # noqa: BLE001 - any failure ends only this session, said why
            reason = failure_reason(exc)
            log.info("relay session %s ended: %s", session.number, reason)
        finally:
            self.sessions.pop(session.number, None)
            if not session.closed:
                with contextlib.suppress(Exception):
                    await session.send(
                        relay.Close(session.number, "" if reason == "closed" else reason)
                    )

    def _end_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for session in self.sessions.values():
            session.closed = True
        self.sessions.clear()
