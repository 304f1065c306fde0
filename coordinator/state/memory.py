"""The coordinator's state in memory: agents (in the market), jobs, leases and their indexes.

Rebuilt from the database at start (`coordinator.state.load`); every room is handed the same
`State`, and every change anyone can observe is committed before it is acknowledged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from coordinator.jobs import PENDING, Job, Lease
from coordinator.market import Market
from shared.receipts import SealedReceipt


@dataclass
class State:
    market: Market
    jobs: dict[str, Job] = field(default_factory=dict)
    jobs_by_key: dict[tuple[str, str], Job] = field(default_factory=dict)
    leases: dict[str, Lease] = field(default_factory=dict)
    pending: dict[str, Job] = field(default_factory=dict)
    # secret env values of unfinished jobs, for their winning agent only; erased at the end
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    # each lease's last accepted receipt (None: none yet), filled as leases are seen
    last_receipts: dict[str, SealedReceipt | None] = field(default_factory=dict)
    _job_leases: dict[str, list[str]] = field(default_factory=dict)
    _agent_leases: dict[str, list[str]] = field(default_factory=dict)

    def refresh_from(self, fresher: State) -> None:
        """Take on what a fresh load from the database holds (a standby's view), keeping this
        object, which every room was handed."""
        self.__dict__.update(fresher.__dict__)

    def index_job(self, job: Job) -> None:
        self.jobs[job.id] = job
        self.jobs_by_key[(job.enterprise_id, job.idempotency_key)] = job
        if job.state == PENDING:
            self.pending[job.id] = job

    def index_lease(self, lease: Lease) -> None:
        self.leases[lease.id] = lease
        self._job_leases.setdefault(lease.job_id, []).append(lease.id)
        self._agent_leases.setdefault(lease.agent_id, []).append(lease.id)

    def leases_of(self, agent_id: str, active_only: bool = True) -> list[Lease]:
        """The agent's leases, oldest first (its active ones unless `active_only` is False)."""
        leases = [self.leases[lease_id] for lease_id in self._agent_leases.get(agent_id, ())]
        return [lease for lease in leases if lease.active] if active_only else leases

    def leases_of_job(self, job_id: str) -> list[Lease]:
        return [self.leases[lease_id] for lease_id in self._job_leases.get(job_id, ())]

    def lease_party(self, lease_id: str) -> tuple[str, str]:
        """The (job_id, enterprise_id) a lease bills."""
        job = self.jobs[self.leases[lease_id].job_id]
        return job.id, job.enterprise_id
