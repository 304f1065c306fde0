"""What the scheduler's two rooms, auctions (`Scheduler`) and deadlines (`Deadlines`), are
handed: one declaration of their collaborators, so that both are wired the same way."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from coordinator.commit import Committer
from coordinator.config import Settings
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
