"""Committing what the rooms changed: jobs, leases and agents with their log entries, at once."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from coordinator import billing, tlog
from coordinator.jobs import Job, Lease
from coordinator.market import Agent
from coordinator.settlement import Settlement
from coordinator.state import State
from coordinator.state.rows import AGENT_UPDATE, agent_row, job_row, lease_row
from coordinator.storage import Database, Session


class Committer:
    def __init__(
        self,
        state: State,
        database: Database,
        settlement: Settlement,
        clock: Callable[[], int],
    ) -> None:
        self.state = state
        self.database = database
        self.settlement = settlement
        self.clock = clock

    async def save(
        self,
        jobs: Sequence[Job] = (),
        leases: Sequence[Lease] = (),
        agents: Sequence[Agent] = (),
        extra: Callable[[Session], None] | None = None,
        entries: Sequence[bytes] = (),
    ) -> None:
        """Commit jobs, leases and agents, and append the log entries of what changed, at once.

        A job that finished loses its secret env values, and is settled unless a receipt may
        still come for it."""
        job_rows = [job_row(j) for j in jobs]
        lease_rows = [lease_row(lease) for lease in leases]
        agent_rows = [agent_row(a) for a in agents]
        finished = [j for j in jobs if j.final]
        ended = [j.id for j in finished]
        for job_id in ended:
            self.state.secrets.pop(job_id, None)
        now = self.clock()
        settle = self.settlement.settle_or_defer(finished, now)
        log_entries = list(entries)

        def write(db: Session) -> None:
            if job_rows:
                db.table("jobs").upsert_all(job_rows, pk="id")
            for job_id in settle:
                billing.settle_job(db, job_id, now)
            for job_id in ended:
                db.conn.execute("DELETE FROM job_secrets WHERE job_id = ?", [job_id])
            if lease_rows:
                db.table("leases").upsert_all(lease_rows, pk="id")
            if agent_rows:
                db.conn.executemany(AGENT_UPDATE, agent_rows)
            if extra is not None:
                extra(db)
            if log_entries:
                tlog.append_entries(db, log_entries)

        await self.database.run(write)
