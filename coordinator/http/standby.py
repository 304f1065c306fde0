"""A standby's door: it serves what only reads (the public log, the read-only views, health and
metrics) from its view of the database, refreshed every `standby_refresh_ms`, and sends every
other request to the leader."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from coordinator.errors import NotLeader
from coordinator.http.keys import COORDINATOR, ROLE, Handler
from coordinator.state import load_state

log = logging.getLogger(__name__)

AGENT_PREFIX = "/v1/agent/"


def serves_on_a_standby(request: web.Request) -> bool:
    return request.method in ("GET", "HEAD") and not request.path.startswith(AGENT_PREFIX)


@web.middleware
async def standby_gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    role = request.app[ROLE]
    if role.name == "leader" or serves_on_a_standby(request):
        return await handler(request)
    leader = role.leader_url
    where = f"the leader is at {leader}" if leader else "no leader has been elected yet"
    raise NotLeader(f"this coordinator is a standby; {where}", leader)


async def keep_warm(app: web.Application, interval_s: float) -> None:
    """Reload the market, jobs and leases from the database, so the read-only views are
    current, and forget the tokens looked up, so one revoked on the leader is refused here
    within a refresh too."""
    coordinator = app[COORDINATOR]
    while True:
        await asyncio.sleep(interval_s)
        try:
            fresher = await coordinator.database.run(
                lambda db: load_state(db, coordinator.settings, coordinator.clock())
            )
            coordinator.state.refresh_from(fresher)
            coordinator.principals.forget_all()
        except Exception:
            log.exception("refreshing the standby's view failed")
