"""The relay's doors: the agent's channel (a WebSocket upgrade carrying a signed request), and
the enterprise's shells, copies and forwarded ports (WebSocket upgrades with its bearer token),
plus the list of a job's sessions. Only the leader relays; a standby names the leader.

A client upgrade is checked completely before it is accepted: the token, that the job is the
enterprise's, running, on an agent whose channel is open, and under its bound of sessions; so
a refusal is an HTTP status with a sentence and nothing is opened on the agent.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from coordinator.accounts import new_id
from coordinator.errors import (
    ApiError,
    Conflict,
    Forbidden,
    NotLeader,
    Unauthenticated,
    Unprocessable,
)
from coordinator.http.keys import AGENT_LIMITS, COORDINATOR, ROLE
from coordinator.http.tokens import principal
from coordinator.jobs.model import LEASE_RUNNING, RUNNING
from coordinator.relay.hub import RelayHub, RelaySession
from coordinator.relay.records import list_sessions, record_closed, record_opened
from shared.messages import relay

HUB = web.AppKey("relay_hub", RelayHub)
AGENT_PATH = "/v1/agent/relay"
SIGNED_HEADER = "X-Suanli-Signed-Request"  # base64 of a signed request envelope for GET AGENT_PATH
HEARTBEAT_S = 20.0  # pings keep NAT mappings open and find dead peers


class UpgradeRequired(ApiError):
    status = 426
    code = "upgrade_required"


class TooManySessions(Conflict):
    code = "too_many_sessions"


def _require_leader(request: web.Request) -> None:
    role = request.app[ROLE]
    if role.name != "leader":
        where = (
            f"the leader is at {role.leader_url}" if role.leader_url else "no leader is elected yet"
        )
        raise NotLeader(
            f"this coordinator is a standby and relays nothing; {where}", role.leader_url
        )


async def agent_channel(request: web.Request) -> web.StreamResponse:
    _require_leader(request)
    coordinator = request.app[COORDINATOR]
    try:
        envelope = base64.b64decode(request.headers.get(SIGNED_HEADER, ""), validate=True)
    except (binascii.Error, ValueError):
        raise Unauthenticated(
            f"the relay channel needs a signed request in {SIGNED_HEADER}"
        ) from None
    agent, _ = coordinator.signed_requests.authenticate(envelope, "GET", AGENT_PATH)
    request.app[AGENT_LIMITS].take(agent.agent_id)
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=relay.MAX_FRAME)
    if not ws.can_prepare(request).ok:
        raise UpgradeRequired("the relay channel is a WebSocket")
    await ws.prepare(request)
    await request.app[HUB].serve_agent(agent.agent_id, ws)
    return ws


def _open_frame(request: web.Request, kind: str) -> dict[str, Any]:
    query = request.query
    if kind == "port":
        return {"kind": "port", "port": _number(query.get("port"), "port")}
    fields: dict[str, Any] = {"kind": "exec", "argv": query.getall("cmd", [])}
    if not fields["argv"]:
        raise Unprocessable("name the command to run (cmd=...)")
    fields["tty"] = query.get("tty") == "true"
    fields["stdin"] = query.get("stdin") == "true"
    for name in ("rows", "cols"):
        if name in query:
            fields[name] = _number(query[name], name)
    return fields


def _number(text: str | None, name: str) -> int:
    if text is None or not text.isdigit():
        raise Unprocessable(f"{name} must be a whole number, got {text!r}")
    return int(text)


async def _client_session(request: web.Request, kind: str) -> web.StreamResponse:
    _require_leader(request)
    coordinator = request.app[COORDINATOR]
    hub = request.app[HUB]
    who = await principal(request)
    if who.role != "enterprise":
        raise Forbidden("shells, copies and ports are for the enterprise that posted the job")
    job = coordinator.jobs.find(who, request.match_info["job_id"])
    lease = coordinator.state.leases.get(job.lease_id) if job.lease_id else None
    if job.state != RUNNING or lease is None or lease.state != LEASE_RUNNING:
        raise Conflict(f"job {job.id} is {job.state}; a shell, copy or port needs it running")
    channel = hub.channels.get(lease.agent_id)
    if channel is None:
        raise Conflict(
            f"the provider's agent running job {job.id} has no relay channel open now; "
            "try again in a few seconds"
        )
    limit = coordinator.settings.relay_sessions_per_job
    if hub.sessions_of(job.id) >= limit:
        raise TooManySessions(f"job {job.id} already has {limit} sessions open, the most allowed")
    number = hub.new_number()
    fields = _open_frame(request, kind)
    try:
        checked = relay.decode(relay.encode(relay.Open(number, lease.id, **fields)))
        assert isinstance(checked, relay.Open)
        open_frame = checked
    except msgspec.ValidationError as exc:
        raise Unprocessable(f"the session was refused: {exc}") from None
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=relay.MAX_FRAME)
    if not ws.can_prepare(request).ok:
        raise UpgradeRequired(f"this route opens a WebSocket; job {job.id} is ready for one")
    settings = coordinator.settings
    session = RelaySession(
        number=number,
        record_id=new_id("sess"),
        job_id=job.id,
        lease_id=lease.id,
        channel=channel,
        byte_limit=settings.relay_session_bytes,
        idle_s=settings.relay_idle_ms / 1000,
        still_allowed=_still_allowed(coordinator, request, job.id, lease.id),
    )
    hub.attach(session)  # counted from here, so two upgrades at once cannot both pass the bound
    try:
        await ws.prepare(request)
        detail = " ".join(open_frame.argv) if kind == "exec" else f"127.0.0.1:{open_frame.port}"
        record_opened(
            coordinator.database,
            {
                "id": session.record_id,
                "job_id": job.id,
                "lease_id": lease.id,
                "agent_id": lease.agent_id,
                "enterprise_id": job.enterprise_id,
                "token_hash": who.token_hash,
                "kind": "tty" if open_frame.tty else kind,
                "detail": detail[:500],
                "started_at_ms": coordinator.clock(),
            },
        )
        await hub.relay(session, open_frame, ws)
    finally:
        hub.detach(session)
        if ws.prepared:
            record_closed(
                coordinator.database,
                session.record_id,
                coordinator.clock(),
                session.bytes_in,
                session.bytes_out,
                session.exit_code,
                session.reason,
            )
    return ws


async def exec_session(request: web.Request) -> web.StreamResponse:
    return await _client_session(request, "exec")


async def port_session(request: web.Request) -> web.StreamResponse:
    return await _client_session(request, "port")


async def job_sessions(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    who = await principal(request)
    job = coordinator.jobs.find(who, request.match_info["job_id"])
    rows = await coordinator.database.run(lambda db: list_sessions(db, job_id=job.id))
    for row in rows:
        row.pop("token_hash")
    return web.json_response({"job_id": job.id, "sessions": rows})


async def _close_all(app: web.Application) -> None:
    hub = app[HUB]
    for channel in list(hub.channels.values()):
        for session in list(channel.sessions.values()):
            session.end("the coordinator is stopping")
        with contextlib.suppress(Exception):
            await channel.ws.close()


def _still_allowed(
    coordinator: Any, request: web.Request, job_id: str, lease_id: str
) -> Callable[[], Awaitable[str | None]]:
    token = request.headers.get("Authorization", "").partition(" ")[2].strip()

    async def check() -> str | None:
        lease = coordinator.state.leases.get(lease_id)
        if lease is None or lease.state != LEASE_RUNNING:
            return f"job {job_id} no longer runs on the lease this session opened"
        agent = coordinator.state.market.agents.get(lease.agent_id)
        if agent is None or agent.revoked:
            return "the provider's agent running the job was revoked"
        try:
            await coordinator.principals.for_token(token)
        except ApiError:
            return "the token that opened this session is no longer valid"
        return None

    return check


async def _sweeping(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[HUB].sweep())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def mount(app: web.Application) -> None:
    """Add the relay's routes and its hub to the coordinator's app."""
    app[HUB] = RelayHub()
    app.cleanup_ctx.append(_sweeping)
    app.router.add_get(AGENT_PATH, agent_channel)
    app.router.add_get("/v1/jobs/{job_id}/exec", exec_session)
    app.router.add_get("/v1/jobs/{job_id}/port-forward", port_session)
    app.router.add_get("/v1/jobs/{job_id}/sessions", job_sessions)
    app.on_shutdown.append(_close_all)
