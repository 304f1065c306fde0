"""Wake-ups between rooms: an agent's lease version for its long poll, and the scheduler's nudge."""

from __future__ import annotations

import asyncio


class Signals:
    def __init__(self) -> None:
        self.agent_versions: dict[str, int] = {}
        self.closing = False
        self.scheduler = asyncio.Event()
        self._agent_events: dict[str, asyncio.Event] = {}

    def notify(self, agent_id: str) -> None:
        """The agent's leases changed: its version moves on and its waiting poll is answered."""
        self.agent_versions[agent_id] = self.agent_versions.get(agent_id, 0) + 1
        event = self._agent_events.get(agent_id)
        if event is not None:
            event.set()

    def version(self, agent_id: str) -> int:
        return self.agent_versions.get(agent_id, 0)

    def wake_scheduler(self) -> None:
        self.scheduler.set()

    async def wait_for_change(self, agent_id: str, known: int, wait_ms: int) -> None:
        """Wait up to `wait_ms` for the agent's version to move on from `known`."""
        if self.version(agent_id) == known and wait_ms > 0 and not self.closing:
            event = self._agent_events.setdefault(agent_id, asyncio.Event())
            event.clear()
            try:
                await asyncio.wait_for(event.wait(), timeout=wait_ms / 1000)
            except TimeoutError:
                pass

    def close_long_polls(self) -> None:
        """Answer every waiting lease poll now (the service is shutting down)."""
        self.closing = True
        for event in self._agent_events.values():
            event.set()
