"""`serve`'s loop: on SQLite one process serves its file (a second is refused); on PostgreSQL
each process stands for election, serves as a standby until it leads, then as the leader, and
stops the moment another coordinator has taken the lead from it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
from aiohttp import web

from coordinator.billing import VoucherPolicy
from coordinator.config import ConfigError, Settings
from coordinator.http.app import make_app
from coordinator.leadership import Election, LeaseKeeper, fence_for
from coordinator.role import LEADER, STANDBY, Role
from coordinator.storage import is_postgres_url, sqlite, sqlite_path
from shared.coordinator_urls import TransportError, check_coordinator_url
from shared.errors import SuanliError

log = logging.getLogger(__name__)

FENCED_EXIT = 3  # the exit status of a leader that lost the lead (systemd restarts it)
ELECTION_POLL_S = 0.2
ELECTION_RETRY_S = 1.0


@dataclass(frozen=True)
class Listener:
    host: str
    port: int
    ssl_context: ssl.SSLContext | None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


@contextlib.contextmanager
def sqlite_serve_lock(location: str) -> Iterator[None]:
    """One serving process per SQLite file: a second one is refused, not left to interleave."""
    try:
        with sqlite.sole_user(sqlite_path(location)):
            yield
    except sqlite.InUse:
        raise ConfigError(
            f"another suanli-coordinator already serves {sqlite_path(location)}; SQLite "
            "has one coordinator (several share a PostgreSQL database)"
        ) from None


async def _start(app: web.Application, listener: Listener, settings: Settings) -> web.AppRunner:
    # a connection gets header_timeout_s for each request head (the slow-loris bound)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=settings.header_timeout_s)
    await runner.setup()
    site = web.TCPSite(
        runner, listener.host, listener.port, ssl_context=listener.ssl_context, reuse_address=True
    )
    await site.start()
    return runner


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _lost_the_lead(reason: str) -> None:
    """Called from the lease keeper's thread or the writer's: nothing more may be written, and
    nothing this process holds in memory is the market any longer."""
    log.error("stopping: %s", reason)
    logging.shutdown()
    sys.stderr.flush()
    os._exit(FENCED_EXIT)


async def serve(
    settings: Settings, location: str, policy: VoucherPolicy, listener: Listener
) -> int:
    stop = _stop_event()
    if not is_postgres_url(location):
        with sqlite_serve_lock(location):
            runner = await _start(make_app(settings, location, policy=policy), listener, settings)
            print(f"serving {listener.url} on {sqlite_path(location)}", flush=True)
            await stop.wait()
            await runner.cleanup()
        return 0
    return await _serve_elected(settings, location, policy, listener, stop)


async def _serve_elected(
    settings: Settings,
    location: str,
    policy: VoucherPolicy,
    listener: Listener,
    stop: asyncio.Event,
) -> int:
    url = settings.public_url or listener.url
    try:
        url = check_coordinator_url(url)
    except TransportError as exc:
        raise ConfigError(f"public_url: {exc}") from None
    election = await asyncio.to_thread(Election, location, url, settings.leader_lease_ms)
    role = Role(STANDBY)
    standby: web.AppRunner | None = None
    try:
        while not stop.is_set():
            try:
                lead = await asyncio.to_thread(election.try_lead)
                if lead is not None:
                    break
                seen = await asyncio.to_thread(election.seen)
                role.takeovers = await asyncio.to_thread(election.takeovers)
            except psycopg.Error as exc:  # the database went away: stand by, and ask again
                log.warning("the election could not reach the database: %s", exc)
                role.leader_url = None
                await asyncio.sleep(ELECTION_RETRY_S)
                with contextlib.suppress(psycopg.Error, SuanliError):
                    await asyncio.to_thread(election.reconnect)
                continue
            role.epoch = None if seen is None else seen.epoch
            role.leader_url = seen.url if seen is not None and seen.live else None
            if standby is None:
                app = make_app(settings, location, policy=policy, role=role)
                standby = await _start(app, listener, settings)
                print(f"serving {listener.url} as a standby", flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), ELECTION_POLL_S)
        else:
            return 0
        if standby is not None:
            await standby.cleanup()
        role.name, role.epoch, role.leader_url = LEADER, lead.epoch, url
        role.takeovers = await asyncio.to_thread(election.takeovers)
        keeper = LeaseKeeper(election, lead, _lost_the_lead)
        keeper.start()
        fence = fence_for(lead, lambda: _lost_the_lead(f"fenced out at epoch {lead.epoch}"))
        app = make_app(
            settings,
            location,
            policy=policy,
            role=role,
            fence=fence,
            on_writer_died=lambda: _lost_the_lead("the database writer stopped"),
        )
        runner = await _start(app, listener, settings)
        print(f"serving {listener.url} as the leader at epoch {lead.epoch}", flush=True)
        await stop.wait()
        await runner.cleanup()
        keeper.stop()
        return 0
    finally:
        election.close()
