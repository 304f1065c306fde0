"""The market book: the agents in memory, who holds which GPU UUID, and the ask index kept in
step with every change (membership, heartbeats, flags, leases)."""

from __future__ import annotations

from typing import Any

from coordinator.market.agents import Agent, Flag, Gpu
from coordinator.market.capacity import Inventory
from coordinator.market.index import OfferIndex
from coordinator.market.reconcile import operator_clear, reconcile
from coordinator.market.summary import summary
from shared.auction import AgentOffer, JobSpec


class Market:
    """Agents and GPUs in memory, with an ask-ordered index of agents that have free GPUs."""

    def __init__(self, half_life_ms: int) -> None:
        self.agents: dict[str, Agent] = {}
        self.gpu_owner: dict[str, str] = {}
        self.half_life_ms = half_life_ms
        self._index = OfferIndex()

    @property
    def version(self) -> int:
        """Moves whenever the offers may have grown: auctions that failed may succeed now."""
        return self._index.version

    # -- membership ---------------------------------------------------------------------

    def add_agent(self, agent: Agent) -> None:
        self.agents[agent.agent_id] = agent
        for gpu in agent.gpus.values():
            self.gpu_owner.setdefault(gpu.uuid, agent.agent_id)
        self.refresh(agent)

    def refresh(self, agent: Agent, capacity_may_grow: bool = True) -> None:
        """Put the agent in, or take it out of, the ask index after anything changed."""
        self._index.update(agent, capacity_may_grow)

    def hand_over(self, old: Agent, new: Agent) -> None:
        """The agent's key was rotated: its GPUs, flags, ask and liveness pass to the new key's
        agent, and the old key leaves the market for good."""
        for uuid, gpu in old.gpus.items():
            gpu.agent_id = new.agent_id
            new.gpus[uuid] = gpu
            if self.gpu_owner.get(uuid) == old.agent_id:
                self.gpu_owner[uuid] = new.agent_id
        for (uuid, kind), flag in old.flags.items():
            flag.agent_id = new.agent_id
            new.flags[(uuid, kind)] = flag
        new.scratch_held.update(old.scratch_held)
        old.gpus, old.flags, old.scratch_held = {}, {}, {}
        new.ask_per_gpu_hour, new.online, new.last_seen_ms = (
            old.ask_per_gpu_hour,
            old.online,
            old.last_seen_ms,
        )
        new.host, new.driver_version = old.host, old.driver_version
        new.uuid_budget, new.uuid_budget_at_ms = old.uuid_budget, old.uuid_budget_at_ms
        old.revoked, old.online = True, False
        self.agents[new.agent_id] = new
        self.refresh(old)
        self.refresh(new)

    def revoke(self, agent: Agent) -> None:
        """Take a revoked agent's GPUs out of the market; the UUIDs it held are free to others."""
        agent.revoked = True
        agent.online = False
        for uuid in agent.gpus:
            if self.gpu_owner.get(uuid) == agent.agent_id:
                del self.gpu_owner[uuid]
        self.refresh(agent)

    def mark_offline(self, agent: Agent) -> None:
        agent.online = False
        self.refresh(agent)

    # -- heartbeats and flags -----------------------------------------------------------

    def reconcile(
        self, agent: Agent, inventory: Inventory, now_ms: int
    ) -> tuple[list[Gpu], list[Flag]]:
        """Apply a heartbeat's inventory (see `coordinator.market.reconcile`)."""
        new_gpus, changed = reconcile(agent, inventory, now_ms, self.gpu_owner)
        self.refresh(agent)
        return new_gpus, changed

    def clear_flag(self, agent: Agent, uuid: str, kind: str, now_ms: int) -> list[Gpu]:
        """An operator cleared a flag: the GPU is taken as it is now reported (a claim becomes
        the holding, a changed GPU is believed, a vanished one is forgotten). Returns the GPUs
        whose holding moved to this agent."""
        known = uuid in agent.gpus
        moved, former = operator_clear(self.agents, self.gpu_owner, agent, uuid, kind, now_ms)
        if former is not None:
            self.refresh(former)
        if known:
            self.refresh(agent)
        return moved

    # -- auction inputs -----------------------------------------------------------------

    def offer_of(self, agent: Agent, now_ms: int) -> AgentOffer:
        return agent.offer(now_ms, self.half_life_ms)

    def candidates(self, job: JobSpec, now_ms: int, reason_sample: int = 8) -> list[AgentOffer]:
        """The offers that decide the job's auction (see `OfferIndex.candidates`)."""
        return self._index.candidates(job, self.agents, now_ms, self.half_life_ms, reason_sample)

    # -- leases -------------------------------------------------------------------------

    def assign(
        self, agent: Agent, gpu_uuids: tuple[str, ...], lease_id: str, scratch_bytes: int = 0
    ) -> None:
        for uuid in gpu_uuids:
            agent.gpus[uuid].lease_id = lease_id
        if scratch_bytes:
            agent.scratch_held[lease_id] = scratch_bytes
        self.refresh(agent, capacity_may_grow=False)

    def release(self, agent_id: str, gpu_uuids: tuple[str, ...], lease_id: str) -> None:
        agent = self.agents.get(agent_id)
        if agent is None:
            return
        for uuid in gpu_uuids:
            gpu = agent.gpus.get(uuid)
            if gpu is not None and gpu.lease_id == lease_id:
                gpu.lease_id = None
        agent.scratch_held.pop(lease_id, None)
        self.refresh(agent)

    # -- views --------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        return summary(self.agents.values())
