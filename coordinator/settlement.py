"""Settlement: a finished job's reservation is released once no receipt may still come for it."""

from __future__ import annotations

from collections.abc import Callable

from coordinator import billing
from coordinator.config import Settings
from coordinator.jobs import Job
from coordinator.state import State
from coordinator.storage import Database, Session


class Settlement:
    def __init__(
        self, state: State, database: Database, settings: Settings, clock: Callable[[], int]
    ) -> None:
        self.state = state
        self.database = database
        self.grace_ms = settings.settle_grace_ms
        self.clock = clock
        self._due: dict[str, int] = {}  # finished job -> when its reservation is released anyway
        # a job that ended lately may still hold for late receipts (settling twice is a no-op)
        now = clock()
        for job in state.jobs.values():
            if (
                job.final
                and job.ended_at_ms is not None
                and now - job.ended_at_ms < 2 * self.grace_ms
            ):
                self._due[job.id] = job.ended_at_ms + self.grace_ms

    def waiting(self, job_id: str) -> bool:
        """Whether the finished job waits for a last receipt before it is settled."""
        return job_id in self._due

    def billing_closed(self, job: Job) -> bool:
        """Every lease of the job either never started or has its final receipt accepted."""
        for lease in self.state.leases_of_job(job.id):
            if lease.started_at_ms is None:
                continue
            last = self.state.last_receipts.get(lease.id)
            if lease.active or last is None or not last.receipt.final:
                return False
        return True

    def settle_or_defer(self, finished: list[Job], now: int) -> list[str]:
        """The finished jobs to settle now; the others wait (up to settle_grace_ms) for their
        leases' last receipts, which the reservation must still be able to pay."""
        settle = []
        for job in finished:
            if self.billing_closed(job):
                settle.append(job.id)
                self._due.pop(job.id, None)
            else:
                self._due.setdefault(job.id, now + self.grace_ms)
        return settle

    async def settle_due(self) -> None:
        now = self.clock()
        due = [
            job_id
            for job_id, at in self._due.items()
            if now >= at or self.billing_closed(self.state.jobs[job_id])
        ]
        if not due:
            return
        for job_id in due:
            del self._due[job_id]

        def write(db: Session) -> None:
            for job_id in due:
                billing.settle_job(db, job_id, now)

        await self.database.run(write)
