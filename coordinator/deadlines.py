"""The deadlines the scheduler checks each pass: silent agents, unstarted leases, overruns and
leases at the end of their duration."""

from __future__ import annotations

from collections.abc import Callable

from coordinator.commit import Committer
from coordinator.config import Settings
from coordinator.jobs import LEASE_OFFERED, LEASE_RUNNING, Job, Lease
from coordinator.market import Agent
from coordinator.signals import Signals
from coordinator.state import State
from coordinator.transitions import Transitions


class Deadlines:
    def __init__(
        self,
        state: State,
        transitions: Transitions,
        committer: Committer,
        signals: Signals,
        settings: Settings,
        clock: Callable[[], int],
    ) -> None:
        self.state = state
        self.transitions = transitions
        self.committer = committer
        self.signals = signals
        self.settings = settings
        self.clock = clock

    async def check(self) -> None:
        now = self.clock()
        changed_jobs: list[Job] = []
        changed_leases: list[Lease] = []
        changed_agents: list[Agent] = []
        entries: list[bytes] = []
        self._silent_agents(now, changed_jobs, changed_leases, changed_agents, entries)
        transitions, market = self.transitions, self.state.market
        for lease in self.state.leases.values():
            if not lease.active:
                continue
            job = self.state.jobs[lease.job_id]
            if lease.state == LEASE_OFFERED and now > lease.start_deadline_ms:
                agent = market.agents[lease.agent_id]
                entries.append(
                    transitions.lose(
                        lease,
                        job,
                        "start_deadline",
                        "start_deadline_missed",
                        "the winning agent did not start the job in time",
                        now,
                    )
                )
                transitions.penalise(agent, now)
                changed_jobs.append(job)
                changed_leases.append(lease)
                changed_agents.append(agent)
                self.signals.notify(lease.agent_id)
            elif (
                lease.state == LEASE_RUNNING
                and (lease.stop_requested_at_ms is not None or now >= lease.ends_at_ms)
                and now > (closed := lease.window().closes_at_ms) + lease.stop_grace_ms
            ):
                agent = market.agents[lease.agent_id]
                entries.append(transitions.overrun(lease, job, agent, now, closed))
                changed_jobs.append(job)
                changed_leases.append(lease)
                changed_agents.append(agent)
                self.signals.notify(lease.agent_id)
            elif (
                lease.state == LEASE_RUNNING
                and now >= lease.ends_at_ms
                and lease.stop_reason is None
            ):
                entries.append(transitions.request_stop(lease, "lease_ended", now))
                changed_leases.append(lease)
                self.signals.notify(lease.agent_id)
        if changed_jobs or changed_leases or changed_agents:
            await self.committer.save(
                jobs=changed_jobs, leases=changed_leases, agents=changed_agents, entries=entries
            )
            self.signals.wake_scheduler()

    def _silent_agents(
        self,
        now: int,
        changed_jobs: list[Job],
        changed_leases: list[Lease],
        changed_agents: list[Agent],
        entries: list[bytes],
    ) -> None:
        """Agents past their heartbeat timeout go offline; their leases end as lost."""
        timeout = self.settings.heartbeat_timeout_ms
        for agent in self.state.market.agents.values():
            if (
                agent.online
                and agent.last_seen_ms is not None
                and now - agent.last_seen_ms > timeout
            ):
                self.state.market.mark_offline(agent)
                changed_agents.append(agent)
                for lease in self.state.leases_of(agent.agent_id):
                    job = self.state.jobs[lease.job_id]
                    entries.append(
                        self.transitions.lose(
                            lease,
                            job,
                            "agent_lost",
                            "agent_lost",
                            f"agent {agent.agent_id[:12]} stopped heartbeating",
                            now,
                        )
                    )
                    changed_jobs.append(job)
                    changed_leases.append(lease)
                if changed_leases:
                    self.transitions.penalise(agent, now)
