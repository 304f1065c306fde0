"""The agent protocol's routes: each authenticates the signed request first (over the bytes as
received), counts it against the agent's allowance, then hands the body to the agent door."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from coordinator.http.bodies import msgpack_answer, msgpack_body
from coordinator.http.keys import AGENT_LIMITS, COORDINATOR, LOG_LIMITS, Handler
from coordinator.http.openapi import Route
from coordinator.limits import RateLimiter
from coordinator.service import Coordinator
from shared.messages import agent_protocol as ap
from shared.messages import convert
from shared.messages.fields import Message

# Log chunks an agent may send a second, over all its leases (they are coalesced as stored).
# Live logs ship at most a chunk a second for each job that prints a little: a full agent runs
# up to one job per GPU, so the rate is one a second per GPU it may have, and a little for jobs
# that print 64 KiB chunks; a flood beyond it waits out the 429s, and stops at the job's bound
# on log bytes. It stays below the agent's whole allowance (agent_requests_per_s, 100 by
# default), which its heartbeats, lease polls and receipts share.
LOG_CHUNKS_PER_S, LOG_CHUNK_BURST = ap.MAX_GPUS_PER_AGENT + 16, 200


def _agent_handler(
    method: Callable[[Coordinator], Callable[..., Awaitable[dict[str, Any]]]],
    body_type: type[Message],
    limits: web.AppKey[RateLimiter] | None = None,
    signed: bool = False,
) -> Handler:
    """A handler for a signed agent request, answered by the room method that `method` picks
    with the body as a `body_type`; with `signed` the method also gets the request's envelope
    itself (a status report is logged as the agent signed it)."""

    async def handle(request: web.Request) -> web.Response:
        coordinator = request.app[COORDINATOR]
        raw = await msgpack_body(request)
        # the signature is checked over the bytes received; the opened body is converted after
        agent, payload = coordinator.signed_requests.authenticate(raw, request.method, request.path)
        # counted after the signature: nobody can spend another agent's allowance
        request.app[AGENT_LIMITS].take(agent.agent_id)
        if limits is not None:
            request.app[limits].take(agent.agent_id)
        body = convert(body_type, payload)
        if signed:
            return msgpack_answer(await method(coordinator)(agent, body, raw))
        return msgpack_answer(await method(coordinator)(agent, body))

    return handle


async def enrol(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    agent = await coordinator.enrolment.enrol(await msgpack_body(request), request.path)
    return msgpack_answer(
        {
            "agent_id": agent.agent_id,
            "provider_id": agent.provider_id,
            "heartbeat_interval_ms": coordinator.settings.heartbeat_interval_ms,
        },
        status=201,
    )


def _agent(
    path: str,
    request: type[Message],
    response: type[Message],
    summary: str,
    method: Callable[[Coordinator], Callable[..., Awaitable[dict[str, Any]]]],
    limits: web.AppKey[RateLimiter] | None = None,
    signed: bool = False,
) -> tuple[Route, Handler]:
    """A signed agent route: its declaration, and the handler that decodes the declared body."""
    route = Route("POST", "/v1/agent/" + path, request, response, summary, "signed")
    return route, _agent_handler(method, request, limits, signed)


ROUTES: list[tuple[Route, Handler]] = [
    (
        Route(
            "POST",
            "/v1/agent/enroll",
            ap.EnrolRequest,
            ap.EnrolAnswer,
            "Register an agent key with a one-time enrolment token: `request` is a signed "
            "request envelope, by the key it registers, whose body is an EnrolBody",
            "enrolment",
            status=201,
        ),
        enrol,
    ),
    _agent(
        "heartbeat",
        ap.Heartbeat,
        ap.HeartbeatAnswer,
        "Report inventory, telemetry and ask price; capacity is reconciled",
        lambda c: c.heartbeats.heartbeat,
    ),
    _agent(
        "leases",
        ap.LeasePoll,
        ap.LeasesAnswer,
        "Long-poll the agent's leases: returns when they change or after wait_ms",
        lambda c: c.delivery.agent_leases,
    ),
    _agent(
        "status",
        ap.StatusReport,
        ap.StatusAnswer,
        "Report a lease's container started, exited (exit_code) or failed (reason_code)",
        lambda c: c.reports.agent_status,
        signed=True,
    ),
    _agent(
        "logs",
        ap.LogChunk,
        ap.LogAnswer,
        "Append a chunk of a job's log at an offset",
        lambda c: c.reports.append_log,
        LOG_LIMITS,
    ),
    _agent(
        "receipts",
        ap.ReceiptBatch,
        ap.ReceiptsAnswer,
        "Submit a batch of sealed usage receipts: one result per receipt, accepted (naming "
        "its acknowledgement by position) or rejected naming the rule it broke; "
        "acknowledgements are countersigned 'acceptance' envelopes",
        lambda c: c.receipts.accept_receipts,
    ),
    _agent(
        "rotate-key",
        ap.RotateKey,
        ap.RotateAnswer,
        "Replace the agent's key (signed by the old key; `request` is the new key's signed "
        "request whose body is a RotateProof); only while the agent holds no active lease. "
        "The new key is logged as an agent_key entry and the old one is refused from then "
        "on",
        lambda c: c.enrolment.rotate_key,
    ),
]
