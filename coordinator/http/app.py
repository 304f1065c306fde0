"""The coordinator's aiohttp app: the room wiring (Coordinator), the app keys, the route table
mounted, and the lifecycle of the scheduler, the admin watcher and the log's checkpoints."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from coordinator import relay, tlog
from coordinator.billing import VoucherPolicy
from coordinator.config import Settings, log_key_location
from coordinator.http.agents import LOG_CHUNK_BURST, LOG_CHUNKS_PER_S
from coordinator.http.errors import errors_and_metrics
from coordinator.http.keys import (
    AGENT_LIMITS,
    COORDINATOR,
    LOG_LIMITS,
    METRICS,
    OPENAPI,
    ROLE,
    TOKEN_LIMITS,
)
from coordinator.http.openapi import openapi_document
from coordinator.http.routes import DECLARATIONS, ROUTES
from coordinator.http.standby import keep_warm, standby_gate
from coordinator.limits import RateLimiter
from coordinator.metrics import Metrics
from coordinator.role import STANDBY, Role
from coordinator.secret_box import SecretBox, secrets_key_location
from coordinator.service import Coordinator
from coordinator.storage import Database, Fence
from shared.clock import now_ms
from shared.identity import PrivateKey, load_private_key, save_private_key

log = logging.getLogger(__name__)

ADMIN_POLL_S = 0.5  # below state.ALIVE_INTERVAL_MS


async def _watch_admin(coordinator: Coordinator) -> None:
    """Apply what `suanli-coordinator admin` changed in the file (revocations, cleared flags)
    within a poll, and persist the agents' request floors that replay protection needs."""
    while True:
        await asyncio.sleep(ADMIN_POLL_S)
        try:
            await coordinator.admin.apply()
            coordinator.signed_requests.flush_request_floors()
        except Exception:
            log.exception("applying administrative changes failed")


def load_or_create_key(path: Path) -> PrivateKey:
    """The coordinator's signing key, created 0600 beside the database on first start."""
    if not path.exists():
        save_private_key(path, PrivateKey.generate())
    return load_private_key(path)


def make_app(
    settings: Settings,
    db_path: str,
    clock: Callable[[], int] = now_ms,
    policy: VoucherPolicy | None = None,
    role: Role | None = None,
    fence: Fence | None = None,
    on_writer_died: Callable[[], None] | None = None,
) -> web.Application:
    """The coordinator's app: the leader's (the default, and SQLite's only one), or with a
    standby `role` one that only reads and sends the rest to the leader. `fence` is checked
    first in each of the leader's writing transactions."""
    role = role or Role()
    standby = role.name == STANDBY
    app = web.Application(
        middlewares=[errors_and_metrics, standby_gate],
        client_max_size=settings.request_body_limit_bytes,
    )
    database = Database(db_path, read_only=standby)
    database.fence = fence
    database.on_writer_died = on_writer_died
    key_path = log_key_location(settings, db_path)
    log_key = tlog.LogKey.load(database.db, key_path, create=not standby)
    box = SecretBox(secrets_key_location(key_path), create=not standby)
    coordinator = Coordinator(
        settings, database, log_key, clock, policy, prepare=not standby, secret_box=box
    )
    app[COORDINATOR] = coordinator
    app[ROLE] = role
    app[METRICS] = Metrics(
        coordinator.state,
        coordinator.scheduler.counters,
        lambda: coordinator.receipt_store.rejections_dropped,
        role,
        database,
    )
    app[AGENT_LIMITS] = RateLimiter(
        settings.agent_requests_per_s, settings.agent_request_burst, "this agent"
    )
    app[LOG_LIMITS] = RateLimiter(LOG_CHUNKS_PER_S, LOG_CHUNK_BURST, "this agent's log shipping")
    app[TOKEN_LIMITS] = RateLimiter(
        settings.token_requests_per_s, settings.token_request_burst, "this token"
    )
    app[OPENAPI] = openapi_document(DECLARATIONS)
    app[tlog.TLOG] = tlog.TransparencyLog(database, log_key, clock=clock)
    for route, handler in ROUTES:
        app.router.add_route(route.method, route.path, handler)
    relay.mount(app)

    scheduler: list[asyncio.Task[None]] = []

    async def standby_lifecycle(app: web.Application) -> AsyncIterator[None]:
        database.start()
        warm = asyncio.create_task(keep_warm(app, settings.standby_refresh_ms / 1000))
        yield
        warm.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await warm
        database.close()
        coordinator.close()

    if standby:
        app.cleanup_ctx.append(standby_lifecycle)
        return app

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        database.start()
        scheduler.append(asyncio.create_task(coordinator.attention.run(), name="attention"))
        scheduler.append(asyncio.create_task(coordinator.run_scheduler(), name="scheduler"))
        scheduler.append(asyncio.create_task(_watch_admin(coordinator), name="admin-watch"))
        yield
        await stop_scheduler(app)
        coordinator.signed_requests.flush_request_floors(stopping=True)
        database.close()
        coordinator.close()

    async def stop_scheduler(app: web.Application) -> None:
        # from the moment the service stops answering, nobody's silence may count against them
        coordinator.signals.close_long_polls()
        for task in scheduler:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        scheduler.clear()

    app.cleanup_ctx.append(lifecycle)
    app.cleanup_ctx.append(tlog.checkpoint_ctx)  # after lifecycle: it stops before the database
    app.on_shutdown.append(stop_scheduler)
    return app
