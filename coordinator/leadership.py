"""Who leads a PostgreSQL database that several coordinators share, and the fence that keeps
every other one from writing to it.

One row, `coordinator_leader`, names the leader: its epoch, a random holder id, its URL and
when its lease ends by the database's clock (so the coordinators' own clocks do not matter),
and the server process of its election session. The leader renews the lease every third of
it. A standby takes over when the lease has lapsed, or at once when the leader's session is
gone from `pg_stat_activity` (PostgreSQL ends it the moment the leader's connection closes: a
kill -9 is seen within milliseconds, while a paused process or a lost machine keeps its
session until its lease lapses).

A takeover bumps the epoch while holding the write lock every writing transaction takes first
(`coordinator.storage.postgres.WRITE_LOCK`); each of the leader's transactions then checks its
epoch with `suanli_fence` under that same lock. So an old leader's batch either committed
before the takeover or is refused after it: a leader that was paused and wakes up writes
nothing. A transaction that holds the write lock past a lapsed lease (a paused leader in the
middle of a batch) is ended by the standby taking over.

Why a lease row and not a session advisory lock alone: a paused process and a machine cut
off keep their session (and its lock) until TCP gives up, minutes later; the lease bounds
that to `leader_lease_ms`, and the epoch makes the overlap harmless.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from coordinator.errors import NotLeader
from coordinator.storage import Session, connect
from coordinator.storage.postgres import WRITE_LOCK, open_connection
from coordinator.storage.postgres_migrations import FENCED

log = logging.getLogger(__name__)

DB_NOW = "(extract(epoch from clock_timestamp()) * 1000)::bigint"
SEEN = (
    f"SELECT epoch, holder, url, expires_at_ms, {DB_NOW}, "
    "EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = session_pid) "
    "FROM coordinator_leader WHERE id = 1"
)
TAKEOVER_WAIT_S = 0.05


def new_holder() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True)
class Lead:
    """This process leads the database from `epoch` on."""

    epoch: int
    holder: str


@dataclass(frozen=True)
class LeaderSeen:
    epoch: int
    holder: str
    url: str | None
    expires_at_ms: int
    now_ms: int
    session_alive: bool

    @property
    def live(self) -> bool:
        """The leader's lease holds and its session is there."""
        return self.expires_at_ms > self.now_ms and self.session_alive

    @property
    def why_not_live(self) -> str:
        return (
            "the leader's lease lapsed"
            if self.expires_at_ms <= self.now_ms
            else "the leader's database session ended"
        )


def fence_for(lead: Lead, on_fenced: Callable[[], None]) -> Callable[[Session], None]:
    """The check the leader's writer runs first in each transaction (holding the write lock)."""

    def fence(db: Session) -> None:
        try:
            db.conn.execute("SELECT suanli_fence(?, ?)", [lead.epoch, lead.holder])
        except psycopg.Error as exc:
            if exc.sqlstate != FENCED:
                raise
            on_fenced()
            raise NotLeader(
                f"this coordinator led at epoch {lead.epoch}; another has taken over"
            ) from None

    return fence


class Election:
    """This process's seat in the election, on a connection of its own."""

    def __init__(self, location: str, url: str | None, lease_ms: int) -> None:
        self.location = location
        self.url = url
        self.lease_ms = lease_ms
        self.holder = new_holder()
        self.conn = self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        connect(self.location).conn.close()  # type: ignore[attr-defined]  # migrated first
        conn = open_connection(self.location).raw
        conn.execute("SET stats_fetch_consistency = none")  # each look sees who is there now
        return conn

    def close(self) -> None:
        self.conn.close()

    def reconnect(self) -> None:
        self.conn.close()
        self.conn = self._connect()

    def seen(self) -> LeaderSeen | None:
        row = self.conn.execute(SEEN).fetchone()
        return None if row is None else LeaderSeen(*row)

    def try_lead(self) -> Lead | None:
        """Take the lead if nobody holds it (its lease lapsed, or its session ended)."""
        current = self.seen()
        if current is not None and current.live:
            return None
        with self.conn.transaction():
            if not self._write_lock(deadline=time.monotonic() + 2 * self.lease_ms / 1000):
                return None
            row = self.conn.execute(SEEN + " FOR UPDATE").fetchone()
            latest = None if row is None else LeaderSeen(*row)
            if latest is not None and latest.live:
                return None  # another standby took over while we waited
            epoch = 1 if latest is None else latest.epoch + 1
            reason = "first leader" if latest is None else latest.why_not_live
            now = self._now()
            self.conn.execute(
                "INSERT INTO coordinator_leader (id, epoch, holder, url, session_pid, "
                "renewed_at_ms, expires_at_ms) VALUES (1, %s, %s, %s, pg_backend_pid(), %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET epoch = excluded.epoch, "
                "holder = excluded.holder, url = excluded.url, "
                "session_pid = excluded.session_pid, renewed_at_ms = excluded.renewed_at_ms, "
                "expires_at_ms = excluded.expires_at_ms",
                [epoch, self.holder, self.url, now, now + self.lease_ms],
            )
            previous = None if latest is None else latest.holder
            self.conn.execute(
                "INSERT INTO coordinator_takeovers (epoch, holder, url, previous_holder, reason, "
                "at_ms) VALUES (%s, %s, %s, %s, %s, %s)",
                [epoch, self.holder, self.url, previous, reason, now],
            )
        log.info("leading the database at epoch %d (%s)", epoch, reason)
        return Lead(epoch, self.holder)

    def _now(self) -> int:
        row = self.conn.execute(f"SELECT {DB_NOW}").fetchone()
        assert row is not None
        return int(row[0])

    def _write_lock(self, deadline: float) -> bool:
        """The write lock, waiting out the batch in flight; a transaction that has held it
        longer than a lease (a paused leader mid-batch) is ended."""
        while True:
            got = self.conn.execute("SELECT pg_try_advisory_xact_lock(%s)", [WRITE_LOCK]).fetchone()
            if got and got[0]:
                return True
            self.conn.execute(
                "SELECT pg_terminate_backend(locks.pid) FROM pg_locks AS locks "
                "JOIN pg_stat_activity AS activity ON activity.pid = locks.pid "
                "WHERE locks.locktype = 'advisory' AND locks.granted "
                "AND locks.classid = %s AND locks.objid = %s "
                "AND activity.xact_start < clock_timestamp() - make_interval(secs => %s)",
                [WRITE_LOCK >> 32, WRITE_LOCK & 0xFFFFFFFF, self.lease_ms / 1000],
            )
            if time.monotonic() > deadline:
                return False
            time.sleep(TAKEOVER_WAIT_S)

    def renew(self, lead: Lead) -> bool:
        """Extend the lease; False once another coordinator holds the lead."""
        cursor = self.conn.execute(
            f"UPDATE coordinator_leader SET renewed_at_ms = {DB_NOW}, "
            f"expires_at_ms = {DB_NOW} + %s, session_pid = pg_backend_pid() "
            "WHERE id = 1 AND epoch = %s AND holder = %s",
            [self.lease_ms, lead.epoch, lead.holder],
        )
        return cursor.rowcount == 1

    def takeovers(self) -> int:
        row = self.conn.execute("SELECT COUNT(*) FROM coordinator_takeovers").fetchone()
        return 0 if row is None else max(int(row[0]) - 1, 0)


class LeaseKeeper:
    """Renews the leader's lease on a thread of its own; calls `on_lost` (from that thread)
    when another coordinator has the lead, or when the lease could not be renewed in time."""

    def __init__(self, election: Election, lead: Lead, on_lost: Callable[[str], None]) -> None:
        self.election = election
        self.lead = lead
        self.on_lost = on_lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep, name="suanli-lease", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _keep(self) -> None:
        interval = self.election.lease_ms / 3000
        renewed = time.monotonic()
        while not self._stop.wait(interval):
            try:
                if not self.election.renew(self.lead):
                    self.on_lost(f"another coordinator leads after epoch {self.lead.epoch}")
                    return
                renewed = time.monotonic()
            except psycopg.Error as exc:
                log.warning("renewing the leader's lease failed: %s", exc)
                if time.monotonic() - renewed > self.election.lease_ms / 1000:
                    self.on_lost("the leader's lease could not be renewed before it lapsed")
                    return
                try:
                    self.election.reconnect()
                except psycopg.Error:
                    pass
