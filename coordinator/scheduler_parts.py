"""What the scheduler's two rooms, auctions (`Scheduler`) and deadlines (`Deadlines`), are
handed (one declaration of their collaborators, so that both are wired the same way), and the
record of what one of their passes changed, to be committed together."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from coordinator.commit import Committer
from coordinator.config import Settings
from coordinator.jobs import Job, Lease
from coordinator.market import Agent
from coordinator.signals import Signals
from coordinator.state import State
from coordinator.transitions import Transitions


@dataclass(eq=False)
class SchedulerParts:
    """The state, the one place it changes, the committer that writes it, the signals that
    wake waiters, the settings and the clock."""

    state: State
    transitions: Transitions
    committer: Committer
    signals: Signals
    settings: Settings
    clock: Callable[[], int]


@dataclass
class Changes:
    """What one pass changed, to be committed together: jobs, leases, agents, and the log
    entries that say so."""

    jobs: list[Job] = field(default_factory=list)
    leases: list[Lease] = field(default_factory=list)
    agents: list[Agent] = field(default_factory=list)
    entries: list[bytes] = field(default_factory=list)

    def ended(self, entry: bytes, job: Job, lease: Lease, agent: Agent) -> None:
        """A lease that ended, with its job, its agent and the log entry that says so."""
        self.entries.append(entry)
        self.jobs.append(job)
        self.leases.append(lease)
        self.agents.append(agent)
