"""The deadlines the scheduler checks each pass: silent agents, unstarted leases, overruns and
leases at the end of their duration."""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.attention import Attention
from coordinator.jobs import LEASE_OFFERED, LEASE_RUNNING
from coordinator.scheduler_parts import Changes, SchedulerParts


@dataclass(eq=False)
class Deadlines(SchedulerParts):
    """Each pass, ends what has run out of time: silent agents, unstarted leases, overruns;
    only the time the coordinator was listening counts against an agent (`attention`)."""

    attention: Attention

    async def check(self) -> None:
        self.attention.tick()
        now = self.clock()
        deaf_since = self.attention.deaf_since
        changes = Changes()
        self._silent_agents(now, changes)
        transitions, market = self.transitions, self.state.market
        for lease in self.state.leases.values():
            if not lease.active:
                continue
            job = self.state.jobs[lease.job_id]
            if lease.state == LEASE_OFFERED and now > lease.start_deadline_ms + deaf_since(
                lease.created_at_ms
            ):
                agent = market.agents[lease.agent_id]
                lost = transitions.lose(
                    lease,
                    job,
                    "start_deadline",
                    "start_deadline_missed",
                    "the winning agent did not start the job in time",
                    now,
                )
                changes.ended(lost, job, lease, agent)
                transitions.penalise(agent, now)
                self.signals.notify(lease.agent_id)
            elif (
                lease.state == LEASE_RUNNING
                and (lease.stop_requested_at_ms is not None or now >= lease.ends_at_ms)
                and now
                > (closed := lease.window().closes_at_ms) + lease.stop_grace_ms + deaf_since(closed)
            ):
                agent = market.agents[lease.agent_id]
                changes.ended(
                    transitions.overrun(lease, job, agent, now, closed), job, lease, agent
                )
                self.signals.notify(lease.agent_id)
            elif (
                lease.state == LEASE_RUNNING
                and now >= lease.ends_at_ms
                and lease.stop_reason is None
            ):
                changes.entries.append(transitions.request_stop(lease, "lease_ended", now))
                changes.leases.append(lease)
                self.signals.notify(lease.agent_id)
        if changes.jobs or changes.leases or changes.agents:
            await self.committer.save(
                jobs=changes.jobs,
                leases=changes.leases,
                agents=changes.agents,
                entries=changes.entries,
            )
            self.signals.wake_scheduler()

    def _silent_agents(self, now: int, changes: Changes) -> None:
        """Agents past their heartbeat timeout go offline; their leases end as lost. One whose
        heartbeat the coordinator is still answering is not silent."""
        timeout = self.settings.heartbeat_timeout_ms
        for agent in self.state.market.agents.values():
            if (
                agent.online
                and agent.last_seen_ms is not None
                and agent.heartbeats_in_hand == 0
                and now - agent.last_seen_ms - self.attention.deaf_since(agent.last_seen_ms)
                > timeout
            ):
                self.state.market.mark_offline(agent)
                changes.agents.append(agent)
                for lease in self.state.leases_of(agent.agent_id):
                    job = self.state.jobs[lease.job_id]
                    changes.entries.append(
                        self.transitions.lose(
                            lease,
                            job,
                            "agent_lost",
                            "agent_lost",
                            f"agent {agent.agent_id[:12]} stopped heartbeating",
                            now,
                        )
                    )
                    changes.jobs.append(job)
                    changes.leases.append(lease)
                if changes.leases:
                    self.transitions.penalise(agent, now)
