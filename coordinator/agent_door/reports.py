"""What agents report about their leases: a start, an exit or a failure, and the job's log."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from coordinator.agent_door.delivery import window_view
from coordinator.commit import Committer
from coordinator.errors import NotFound
from coordinator.jobs import LEASE_OFFERED, Lease
from coordinator.jobs.logs import JobLogs
from coordinator.jobs.secrets import masked_values
from coordinator.market import Agent
from coordinator.signals import Signals
from coordinator.state import State
from coordinator.transitions import Transitions
from shared.messages import agent_protocol as ap


class LeaseReports:
    def __init__(
        self,
        state: State,
        transitions: Transitions,
        committer: Committer,
        signals: Signals,
        logs: JobLogs,
        clock: Callable[[], int],
    ) -> None:
        self.state = state
        self.transitions = transitions
        self.committer = committer
        self.signals = signals
        self.logs = logs
        self.clock = clock

    def _agents_lease(self, agent: Agent, lease_id: str) -> Lease:
        """The lease a report names, if it is this agent's (another's is as good as unknown)."""
        lease = self.state.leases.get(lease_id)
        if lease is None or lease.agent_id != agent.agent_id:
            raise NotFound(f"no lease {lease_id} for this agent")
        return lease

    async def agent_status(
        self, agent: Agent, body: ap.StatusReport, report: bytes = b""
    ) -> dict[str, Any]:
        """A lease's start, exit or failure as the agent reports it; `report` is the signed
        request itself, which the log keeps as the agent's word for the start and the exit."""
        lease = self._agents_lease(agent, body.lease_id)
        job = self.state.jobs[lease.job_id]
        now = self.clock()
        if not lease.active:
            return _status_answer(lease)
        if body.event == "started":
            if lease.state == LEASE_OFFERED:
                started = self.transitions.start(job, lease, now, report)
                await self.committer.save(jobs=[job], leases=[lease], entries=[started])
            return _status_answer(lease)
        if body.event == "exited":
            assert body.exit_code is not None  # StatusReport requires it in an exit report
            ended = self.transitions.end(
                lease, job, now, "exited", body.exit_code, body.reason, report
            )
            await self.committer.save(jobs=[job], leases=[lease], entries=[ended])
        else:
            assert body.reason_code is not None  # StatusReport requires it in a failure report
            ended = self.transitions.fail_start(
                agent, lease, job, now, body.reason_code, body.reason or body.reason_code
            )
            await self.committer.save(jobs=[job], leases=[lease], agents=[agent], entries=[ended])
        self.signals.notify(lease.agent_id)
        self.signals.wake_scheduler()
        return _status_answer(lease)

    async def append_log(self, agent: Agent, body: ap.LogChunk) -> dict[str, Any]:
        lease = self._agents_lease(agent, body.lease_id)
        job = self.state.jobs[lease.job_id]
        if job.lease_id != lease.id:
            # the job moved on to another lease, whose output the log now holds
            return {"stored_bytes": body.offset + len(body.data), "truncated": True}
        secrets = self.state.secrets.get(lease.job_id)
        if lease.log_base is None:
            lease.log_base = await self.logs.size(lease.job_id)
            await self.committer.save(leases=[lease])
        if secrets is None and (job.request.secret_env_names or job.request.registry_auth):
            # its secret values are gone with the job's end, so nothing more could be masked:
            # the log is closed (an honest agent ships it all before it reports the exit)
            size = await self.logs.size(lease.job_id)
            return {"stored_bytes": max(0, size - lease.log_base), "truncated": True}
        return await self.logs.append(
            lease.job_id,
            body.offset,
            body.data,
            masked_values(secrets or {}),
            base=lease.log_base,
        )


def _status_answer(lease: Lease) -> dict[str, Any]:
    return {"lease_id": lease.id, "state": lease.state, "window": window_view(lease)}
