"""What operators change in the database (`suanli-coordinator admin`), applied to the running
service in order: revoked tokens and agents, cleared capacity flags."""

from __future__ import annotations

import logging
from collections.abc import Callable

from coordinator.commit import Committer
from coordinator.jobs import Job, Lease
from coordinator.principals import Principals
from coordinator.signals import Signals
from coordinator.state import State
from coordinator.state.rows import capacity_writes
from coordinator.storage import Database
from coordinator.transitions import Transitions

log = logging.getLogger(__name__)
MAX_CHANGES = 1000  # applied per poll


class AdminChanges:
    def __init__(
        self,
        state: State,
        database: Database,
        transitions: Transitions,
        committer: Committer,
        signals: Signals,
        principals: Principals,
        clock: Callable[[], int],
    ) -> None:
        self.state = state
        self.database = database
        self.transitions = transitions
        self.committer = committer
        self.signals = signals
        self.principals = principals
        self.clock = clock
        self._seen: int = database.db.conn.execute(
            "SELECT COALESCE(MAX(id), 0) FROM admin_changes"
        ).fetchone()[0]

    async def apply(self) -> None:
        """Apply, in order, what operators changed in the database since the last poll."""
        seen = self._seen
        changes = await self.database.run(
            lambda db: db.conn.execute(
                "SELECT id, kind, subject FROM admin_changes WHERE id > ? ORDER BY id LIMIT ?",
                [seen, MAX_CHANGES],
            ).fetchall()
        )
        for change_id, kind, subject in changes:
            self._seen = max(self._seen, change_id)
            if kind == "revoke_token":
                self.principals.forget(subject)
            elif kind == "revoke_agent":
                await self._revoke_agent(subject)
            elif kind == "clear_flag":
                agent_id, uuid, flag = subject.split("|", 2)
                await self._clear_flag(agent_id, uuid, flag)

    async def _revoke_agent(self, agent_id: str) -> None:
        """Out of the market at once; its active leases end as lost and their jobs move on."""
        agent = self.state.market.agents.get(agent_id)
        if agent is None or agent.revoked:
            return
        now = self.clock()
        self.state.market.revoke(agent)
        changed_jobs: list[Job] = []
        changed_leases: list[Lease] = []
        entries: list[bytes] = []
        for lease in self.state.leases_of(agent_id):
            job = self.state.jobs[lease.job_id]
            entries.append(
                self.transitions.lose(
                    lease,
                    job,
                    "agent_revoked",
                    "agent_revoked",
                    f"agent {agent_id[:12]} was revoked by the coordinator's operator",
                    now,
                )
            )
            changed_jobs.append(job)
            changed_leases.append(lease)
        await self.committer.save(jobs=changed_jobs, leases=changed_leases, entries=entries)
        self.signals.notify(agent_id)
        self.signals.wake_scheduler()
        log.warning(
            "agent %s revoked: %d active leases ended as lost", agent_id, len(changed_leases)
        )

    async def _clear_flag(self, agent_id: str, uuid: str, kind: str) -> None:
        agent = self.state.market.agents.get(agent_id)
        if agent is None:
            return
        moved = self.state.market.clear_flag(agent, uuid, kind, self.clock())
        if moved:
            await self.database.run(capacity_writes(moved, [], [], self.clock()))
        self.signals.wake_scheduler()
