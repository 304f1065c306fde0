"""The one place a job or a lease changes state; each lease transition returns the log entry it
logs (the caller commits the entry with the changed rows)."""

from __future__ import annotations

from coordinator.config import Settings
from coordinator.jobs import (
    CANCELLED,
    FAILED,
    LEASE_ENDED,
    LEASE_RUNNING,
    LEASED,
    LOST,
    PENDING,
    RUNNING,
    SUCCEEDED,
    Job,
    Lease,
)
from coordinator.market import Agent
from coordinator.state import State
from shared import log_entries

MAX_REASON = 512
# a failure to start that is the job's own fault fails the job instead of requeueing it
JOB_FAULTS = frozenset(
    {
        "image_not_found",
        "image_pull_failed",
        "invalid_command",
        "start_failed",
        "registry_refused",
        "registry_auth_refused",
    }
)


class Transitions:
    def __init__(self, state: State, settings: Settings) -> None:
        self.state = state
        self.settings = settings

    # -- a lease's life: its window's facts change here, each one logged --------------------

    def award(self, job: Job, lease: Lease) -> bytes:
        """The job won an auction: the lease holds the winner's GPUs until it ends."""
        self.state.index_lease(lease)
        market = self.state.market
        market.assign(
            market.agents[lease.agent_id], lease.gpu_uuids, lease.id, job.request.scratch_bytes
        )
        job.state, job.lease_id = LEASED, lease.id
        job.reason, job.reason_detail = "waiting_for_agent", "the winning agent is starting the job"
        self.state.pending.pop(job.id, None)
        return _award_entry(lease)

    def start(self, job: Job, lease: Lease, now: int, report: bytes) -> bytes:
        """The agent reports the job started; `report` is its signed word for it."""
        lease.state, lease.started_at_ms = LEASE_RUNNING, now
        job.state = RUNNING
        job.reason, job.reason_detail = None, None
        return _lease_event(lease, log_entries.LEASE_STARTED, now, report=report)

    def request_stop(self, lease: Lease, reason: str, now: int) -> bytes:
        """Ask the agent to stop (the caller notifies it after the commit); the billable window
        closes at most the stop grace later."""
        lease.stop_reason = reason
        if lease.stop_requested_at_ms is None:
            lease.stop_requested_at_ms = now
        return _lease_event(lease, log_entries.LEASE_STOP_REQUESTED, now, reason)

    def close(
        self,
        lease: Lease,
        now: int,
        reason: str,
        exit_code: int | None = None,
        report: bytes | None = None,
    ) -> bytes:
        lease.state, lease.ended_at_ms, lease.end_reason = LEASE_ENDED, now, reason
        lease.exit_code = exit_code
        self.state.market.release(lease.agent_id, lease.gpu_uuids, lease.id)
        return _lease_event(lease, log_entries.LEASE_ENDED, now, reason, exit_code, report)

    def lose(
        self, lease: Lease, job: Job, end_reason: str, requeue_reason: str, detail: str, now: int
    ) -> bytes:
        """The lease ends without the agent's word for it; its job moves on (`requeue`)."""
        ended = self.close(lease, now, end_reason)
        self.requeue(job, lease.agent_id, requeue_reason, detail, now)
        return ended

    def end(
        self,
        lease: Lease,
        job: Job,
        now: int,
        why: str,
        exit_code: int | None,
        agent_reason: str | None = None,
        report: bytes | None = None,
    ) -> bytes:
        """The container stopped: the lease ends and the job with it, for the reason it stopped."""
        ended = self.close(lease, now, why, exit_code, report)
        job.exit_code = exit_code
        if lease.stop_reason == "cancelled" or job.cancel_requested:
            self.finish(job, CANCELLED, now, "cancelled", "stopped on the enterprise's request")
        elif lease.stop_reason == "revoked":
            self.finish(
                job,
                FAILED,
                now,
                "credit_exhausted",
                "stopped because the enterprise's credit could not cover more usage",
            )
        elif lease.stop_reason == "lease_ended":
            self.finish(
                job,
                FAILED,
                now,
                "max_duration_reached",
                f"stopped after its maximum duration of {job.request.max_duration_s} s",
            )
        elif exit_code == 0:
            self.finish(job, SUCCEEDED, now, None, None)
        elif agent_reason:
            self.finish(
                job, FAILED, now, "stopped_by_agent", f"the agent stopped it: {agent_reason}"
            )
        elif exit_code == 137:
            self.finish(
                job,
                FAILED,
                now,
                "killed",
                "the container was killed (exit 137: out of memory or SIGKILL)",
            )
        else:
            self.finish(
                job, FAILED, now, "nonzero_exit", f"the container exited with code {exit_code}"
            )
        return ended

    def fail_start(
        self, agent: Agent, lease: Lease, job: Job, now: int, code: str, detail: str
    ) -> bytes:
        """The agent could not start the job: the job's own fault fails it, else it is requeued
        and the agent penalised."""
        ended = self.close(lease, now, f"failed:{code}")
        if code in JOB_FAULTS:
            self.finish(job, FAILED, now, code, detail[:MAX_REASON])
        else:
            self.penalise(agent, now)
            self.requeue(
                job, lease.agent_id, code, f"the agent could not start it: {detail[:200]}", now
            )
        return ended

    def overrun(self, lease: Lease, job: Job, agent: Agent, now: int, closed: int) -> bytes:
        """The agent did not end the lease by its window's `closed` plus the stop grace: end it
        here, penalise the agent, and tell the enterprise why (nothing after the close bills)."""
        ended = self.close(lease, now, "overrun")
        self.penalise(agent, now)
        why = (
            f"agent {lease.agent_id[:12]} did not stop the job within "
            f"{lease.stop_grace_ms // 1000} s of its billable window's close; "
            f"the coordinator ended the lease, and nothing after "
            f"{closed} (ms since the epoch) is billed"
        )
        if job.cancel_requested:
            self.finish(job, CANCELLED, now, "cancelled", f"cancelled; {why}")
        else:
            self.finish(job, FAILED, now, "agent_overran", why)
        return ended

    # -- a job's life ------------------------------------------------------------------------

    def finish(
        self, job: Job, state: str, now: int, reason: str | None, detail: str | None
    ) -> None:
        job.state = state
        job.ended_at_ms = now
        job.reason, job.reason_detail = reason, detail
        self.state.pending.pop(job.id, None)

    def cancel(self, job: Job, now: int) -> bytes | None:
        """The enterprise cancels: a pending job ends now; a placed one's agent is asked to stop
        (the entry returned); a final one, or one already cancelling, is left as it is."""
        if job.final or job.cancel_requested:
            return None
        job.cancel_requested = True
        if job.state == PENDING:
            self.finish(job, CANCELLED, now, "cancelled", "cancelled before it was placed")
            return None
        lease = self.state.leases[job.lease_id] if job.lease_id else None
        if lease is None or not lease.active:
            return None
        job.reason, job.reason_detail = "cancelling", "the agent has been told to stop the job"
        return self.request_stop(lease, "cancelled", now)

    def requeue(self, job: Job, agent_id: str, reason: str, detail: str, now: int) -> None:
        job.attempts += 1
        if agent_id not in job.excluded_agents:
            job.excluded_agents.append(agent_id)
        if job.cancel_requested:
            self.finish(job, CANCELLED, now, "cancelled", "cancelled while its agent was lost")
        elif job.attempts >= self.settings.max_attempts:
            self.finish(job, LOST, now, reason, f"{detail}; gave up after {job.attempts} attempts")
        else:
            job.state, job.lease_id, job.tried_at_version = PENDING, None, None
            job.reason, job.reason_detail = reason, f"{detail}; requeued"
            self.state.pending[job.id] = job

    def penalise(self, agent: Agent, now: int) -> None:
        """Add a penalty on top of what is left of earlier ones after their decay."""
        decayed = 1_000_000 - agent.reliability_ppm(now, self.settings.reliability_half_life_ms)
        agent.penalty_ppm = min(1_000_000, decayed + self.settings.reliability_penalty_ppm)
        agent.penalty_at_ms = now


def _lease_event(
    lease: Lease,
    event: str,
    at_ms: int,
    reason: str | None = None,
    exit_code: int | None = None,
    report: bytes | None = None,
) -> bytes:
    return log_entries.encode_entry(
        log_entries.LEASE_EVENT,
        at_ms,
        log_entries.LeaseEventEntry(lease.id, event, reason, exit_code, report or None),
    )


def _award_entry(lease: Lease) -> bytes:
    return log_entries.encode_entry(
        log_entries.LEASE_AWARD,
        lease.created_at_ms,
        log_entries.LeaseAwardEntry(
            lease.id,
            lease.job_id,
            lease.agent_id,
            lease.gpu_uuids,
            lease.price_per_gpu_hour,
            lease.max_duration_ms,
            lease.stop_grace_ms,
        ),
    )
