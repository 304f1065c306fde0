"""Heartbeats: an agent's ask and inventory, reconciled with the market; plain liveness is
written in batches."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from coordinator.commit import Committer
from coordinator.config import Settings
from coordinator.market import Agent, parse_inventory
from coordinator.signals import Signals
from coordinator.state import State
from coordinator.state.rows import AGENT_UPDATE, agent_row, capacity_writes
from coordinator.storage import Database
from shared.messages import agent_protocol as ap

log = logging.getLogger(__name__)


class Heartbeats:
    def __init__(
        self,
        state: State,
        database: Database,
        committer: Committer,
        signals: Signals,
        settings: Settings,
        clock: Callable[[], int],
    ) -> None:
        self.state = state
        self.database = database
        self.committer = committer
        self.signals = signals
        self.settings = settings
        self.clock = clock
        self._dirty_agents: dict[str, Agent] = {}

    async def heartbeat(self, agent: Agent, body: ap.Heartbeat) -> dict[str, Any]:
        ask = body.ask_per_gpu_hour
        inventory = parse_inventory(body.inventory)
        now = self.clock()
        was_online = agent.online
        previous_ask, agent.ask_per_gpu_hour = agent.ask_per_gpu_hour, ask
        try:
            new_gpus, flags = self.state.market.reconcile(agent, inventory, now)
        except Exception:
            agent.ask_per_gpu_hour = previous_ask  # a refused heartbeat changes nothing
            raise
        new_flags = [f for f in flags if f.cleared_at_ms is None]
        cleared = [f for f in flags if f.cleared_at_ms is not None]
        if new_gpus or flags or not was_online:
            extra = capacity_writes(new_gpus, new_flags, cleared, now)
            agent.heartbeats_in_hand += 1
            try:
                await self.committer.save(agents=[agent], extra=extra)
            finally:
                agent.heartbeats_in_hand -= 1
            for entry in new_flags:
                log.warning("capacity flag %s: %s", entry.kind, entry.detail)
            self.signals.wake_scheduler()
        else:
            self._dirty_agents[agent.agent_id] = agent
        return {
            "heartbeat_interval_ms": self.settings.heartbeat_interval_ms,
            "heartbeat_timeout_ms": self.settings.heartbeat_timeout_ms,
            "lease_version": self.signals.version(agent.agent_id),
            "flags": [{"gpu_uuid": g.uuid, "kind": g.flag} for g in agent.gpus.values() if g.flag],
        }

    def flush(self) -> None:
        """Write the liveness and asks of agents that only heartbeated, in one statement."""
        if not self._dirty_agents:
            return
        rows = [agent_row(agent) for agent in self._dirty_agents.values()]
        self._dirty_agents.clear()
        self.database.submit(lambda db: db.conn.executemany(AGENT_UPDATE, rows))
