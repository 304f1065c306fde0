"""What several coordinators on one PostgreSQL database rely on from the storage below them:
a standby's reads can write nothing and hold up no writer, a writer outlives its database
going away, and replay floors are kept on the database's clock, not each coordinator's."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psycopg
import pytest
from databases import new_database

from coordinator.agent_door.signed_requests import SignedRequests
from coordinator.config import Settings
from coordinator.market import Agent
from coordinator.state import ALIVE_INTERVAL_MS, SKEW_MARGIN_MS, load_state
from coordinator.storage import Database
from coordinator.storage.postgres import WRITE_LOCK
from shared.clock import now_ms
from shared.identity import PrivateKey
from shared.signed_request import sign_request


@pytest.fixture
def database(tmp_path: Path) -> str:
    return new_database("postgresql", tmp_path)


async def test_a_standby_database_refuses_writes_and_takes_no_write_lock(database: str) -> None:
    standby = Database(database, read_only=True)
    standby.start()
    try:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            await standby.run(
                lambda db: db.conn.execute(
                    "INSERT INTO admin_changes (kind, subject, at_ms) VALUES ('clear_flag', 'x', 1)"
                )
            )
        reading = asyncio.create_task(
            standby.run(lambda db: db.conn.execute("SELECT pg_sleep(1)").fetchone())
        )
        await asyncio.sleep(0.3)  # the standby's read is under way
        with psycopg.connect(database, autocommit=True) as writer:
            with writer.transaction():
                got = writer.execute("SELECT pg_try_advisory_xact_lock(%s)", [WRITE_LOCK])
                assert got.fetchone() == (True,), "a standby's read held the leader's write lock"
        await reading
    finally:
        standby.close()
    with psycopg.connect(database, autocommit=True) as conn:
        assert conn.execute("SELECT COUNT(*) FROM admin_changes").fetchone() == (0,)


async def test_the_writer_outlives_its_database_refusing_connections_for_a_while(
    database: str,
) -> None:
    store = Database(database)
    store.start()
    name = database.split("/")[3].split("?")[0]
    admin_url = database.replace(f"/{name}?", "/postgres?")
    try:
        assert await store.run(lambda db: db.conn.execute("SELECT 1").fetchone()) == (1,)
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                [name],
            )
            with pytest.raises(psycopg.Error):  # the batch the lost connection broke
                await store.run(lambda db: db.conn.execute("SELECT 1").fetchone())
            await asyncio.sleep(1.2)  # reconnecting is refused meanwhile, more than once
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        deadline = time.monotonic() + 20
        while True:
            try:
                answer = await store.run(lambda db: db.conn.execute("SELECT 2").fetchone())
                break
            except psycopg.Error:
                assert time.monotonic() < deadline, "the writer never came back"
                await asyncio.sleep(0.2)
        assert answer == (2,)
        assert store._thread is not None and store._thread.is_alive()
    finally:
        store.close()


async def test_request_floors_are_kept_on_the_database_clock(database: str) -> None:
    """A leader whose clock runs 20 s ahead leaves floors that a leader with a right clock
    reads as they are meant: an honest agent is not locked out after the takeover."""
    key = PrivateKey.generate()
    fast = Database(database)  # migrated
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO providers (id, name, uscc, created_at_ms) VALUES ('p', 'P', 'u', 0)"
        )
        conn.execute(
            "INSERT INTO agents (agent_id, provider_id, public_key, hostname, enrolled_at_ms) "
            "VALUES (%s, 'p', %s, 'h', 0)",
            [key.public.agent_id, key.public.raw],
        )
    settings = Settings()
    state = load_state(fast.db, settings, now_ms())
    state.market.add_agent(Agent(key.public.agent_id, "p", "u", key.public, "h"))
    floors = SignedRequests(state, fast, settings, lambda: now_ms() + 20_000)
    fast.start()
    try:
        body = sign_request(key, "POST", "/v1/agent/heartbeat", {}, now_ms())  # a right clock
        floors.authenticate(body, "POST", "/v1/agent/heartbeat")
        floors.flush_request_floors()
        await fast.flush()
    finally:
        fast.close()
    with psycopg.connect(database, autocommit=True) as conn:
        (skew,) = conn.execute("SELECT skew_ms FROM agent_request_floors").fetchone()
        (alive,) = conn.execute("SELECT at_ms FROM coordinator_alive").fetchone()
    assert abs(skew) < 2_000, "the agent's clock is the database's, whatever the leader's says"
    assert abs(alive - now_ms()) < 2_000, "alive on the database's clock, not the leader's"
    right = Database(database)
    try:
        later = load_state(right.db, settings, now_ms()).market.agents[key.public.agent_id]
    finally:
        right.db.conn.close()  # type: ignore[attr-defined]
    # the floor is in the agent's clock: its last request's time, plus the alive interval
    floor = later.not_before_ms - now_ms()
    assert floor <= ALIVE_INTERVAL_MS + SKEW_MARGIN_MS + 2_000, floor
