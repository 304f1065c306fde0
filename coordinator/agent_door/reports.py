"""What agents report about their leases: a start, an exit or a failure, and the job's log."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from coordinator.agent_door.delivery import window_view
from coordinator.commit import Committer
from coordinator.errors import NotFound, Unprocessable
from coordinator.jobs import LEASE_OFFERED, Lease
from coordinator.jobs.logs import JobLogs
from coordinator.market import Agent
from coordinator.signals import Signals
from coordinator.state import State
from coordinator.transitions import MAX_REASON, Transitions


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

    def _agents_lease(self, agent: Agent, body: Any, what: str) -> Lease:
        """The lease a report names, if it is this agent's (another's is as good as unknown)."""
        if type(body) is not dict or type(body.get("lease_id")) is not str:
            raise Unprocessable(f"{what} is a map with lease_id")
        lease = self.state.leases.get(body["lease_id"])
        if lease is None or lease.agent_id != agent.agent_id:
            raise NotFound(f"no lease {body['lease_id']} for this agent")
        return lease

    async def agent_status(self, agent: Agent, body: Any, report: bytes = b"") -> dict[str, Any]:
        """A lease's start, exit or failure as the agent reports it; `report` is the signed
        request itself, which the log keeps as the agent's word for the start and the exit."""
        lease = self._agents_lease(agent, body, "a status report (lease_id, event)")
        event = body.get("event")
        reason = body.get("reason")
        if reason is not None and (type(reason) is not str or len(reason) > MAX_REASON):
            raise Unprocessable(f"reason must be a string of at most {MAX_REASON} characters")
        job = self.state.jobs[lease.job_id]
        now = self.clock()
        if not lease.active:
            return _status_answer(lease)
        if event == "started":
            if lease.state == LEASE_OFFERED:
                started = self.transitions.start(job, lease, now, report)
                await self.committer.save(jobs=[job], leases=[lease], entries=[started])
            return _status_answer(lease)
        if event == "exited":
            code = body.get("exit_code")
            if type(code) is not int or not -(2**31) <= code < 2**31:
                raise Unprocessable("an exit report carries exit_code as an integer")
            ended = self.transitions.end(lease, job, now, "exited", code, reason, report)
            await self.committer.save(jobs=[job], leases=[lease], entries=[ended])
        elif event == "failed":
            code_name = body.get("reason_code")
            if type(code_name) is not str or len(code_name) > 64:
                raise Unprocessable("a failure report carries reason_code")
            ended = self.transitions.fail_start(
                agent, lease, job, now, code_name, reason or code_name
            )
            await self.committer.save(jobs=[job], leases=[lease], agents=[agent], entries=[ended])
        else:
            raise Unprocessable("event must be started, exited or failed")
        self.signals.notify(lease.agent_id)
        self.signals.wake_scheduler()
        return _status_answer(lease)

    async def append_log(self, agent: Agent, body: Any) -> dict[str, Any]:
        lease = self._agents_lease(agent, body, "a log chunk (lease_id, offset, data)")
        return await self.logs.append(
            lease.job_id,
            body.get("offset"),
            body.get("data"),
            list(self.state.secrets.get(lease.job_id, {}).values()),
        )


def _status_answer(lease: Lease) -> dict[str, Any]:
    return {"lease_id": lease.id, "state": lease.state, "window": window_view(lease)}
