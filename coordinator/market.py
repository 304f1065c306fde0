"""The market's hot state: agents, their GPUs, asks and liveness, kept in memory.

Capacity is believed only when it reconciles with what was seen before: a GPU whose memory
size changes, or a GPU that disappears, is flagged and taken out of the market; a GPU UUID
that another agent already holds flags the newcomer's claim, never the holder's GPU (UUIDs
are public, so anyone could name them). A flag clears when what raised it goes away, or when
an operator clears it. What one agent can make the market remember is bounded: GPUs it is
known to have (claims and vanished ones included) and how fast it may name new UUIDs.
Agents with free GPUs are kept ordered by ask so an auction looks only at the cheapest
offers that can decide it.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sortedcontainers import SortedList

from coordinator.capacity import MAX_GPUS_PER_AGENT, GpuReport, HostReport, Inventory
from coordinator.errors import Conflict, TooManyRequests
from shared.auction import AgentOffer, GpuOffer, JobSpec
from shared.gpu_models import tflops_bf16_milli, tflops_display
from shared.identity import PublicKey

RELIABILITY_MAX = 1_000_000

FLAG_UUID_CONFLICT = "uuid_conflict"
FLAG_MEMORY_CHANGED = "memory_changed"
FLAG_MISSING = "gpu_missing"
FLAG_KINDS = (FLAG_UUID_CONFLICT, FLAG_MEMORY_CHANGED, FLAG_MISSING)

# every GPU an agent is known by, its own, vanished ones and refused claims alike
MAX_KNOWN_GPUS = MAX_GPUS_PER_AGENT
# new UUIDs an agent may name: a whole host at once, then a few replacements an hour
NEW_UUID_BURST = MAX_GPUS_PER_AGENT
NEW_UUIDS_PER_HOUR = 8


@dataclass(slots=True)
class Gpu:
    uuid: str
    agent_id: str
    model: str
    memory_total_bytes: int
    index: int = -1
    healthy: bool = True
    health_reason: str | None = None
    flag: str | None = None
    lease_id: str | None = None
    telemetry: GpuReport | None = None
    # the agent that holds this UUID, when this is another agent's refused claim to it
    claimed_from: str | None = None

    @property
    def offerable(self) -> bool:
        return self.healthy and self.flag is None and self.lease_id is None


@dataclass(slots=True)
class Flag:
    agent_id: str
    gpu_uuid: str | None
    kind: str
    detail: str
    at_ms: int
    cleared_at_ms: int | None = None


@dataclass(slots=True)
class Agent:
    agent_id: str
    provider_id: str
    provider_uscc: str
    public_key: PublicKey
    hostname: str
    ask_per_gpu_hour: int | None = None
    last_seen_ms: int | None = None
    online: bool = False
    penalty_ppm: int = 0
    penalty_at_ms: int = 0
    gpus: dict[str, Gpu] = field(default_factory=dict)
    host: HostReport | None = None
    driver_version: str | None = None
    nonces: dict[bytes, int] = field(default_factory=dict)
    # open flags by (GPU UUID, kind): at most one each, so a repeated report adds no row
    flags: dict[tuple[str, str], Flag] = field(default_factory=dict)
    uuid_budget: float = NEW_UUID_BURST
    uuid_budget_at_ms: int = 0
    revoked: bool = False
    # replay protection across restarts: requests issued before this are refused
    not_before_ms: int = 0
    skew_ms: int | None = None

    def free_gpus(self) -> list[Gpu]:
        return sorted((g for g in self.gpus.values() if g.offerable), key=lambda g: g.index)

    def reliability_ppm(self, now_ms: int, half_life_ms: int) -> int:
        halvings = max(0, now_ms - self.penalty_at_ms) // max(1, half_life_ms)
        penalty = self.penalty_ppm >> min(halvings, 62)
        return max(0, RELIABILITY_MAX - penalty)


class Market:
    """Agents and GPUs in memory, with an ask-ordered index of agents that have free GPUs."""

    def __init__(self, half_life_ms: int) -> None:
        self.agents: dict[str, Agent] = {}
        self.gpu_owner: dict[str, str] = {}
        self.half_life_ms = half_life_ms
        self._offering: SortedList = SortedList()
        self._offering_keys: dict[str, tuple[int, str]] = {}
        # (model, memory, free-count bucket) -> agents with that many such free GPUs, by ask
        self._by_hardware: dict[tuple[str, int, int], SortedList] = {}
        # free-count bucket -> agents with that many free GPUs in all, by ask
        self._by_free: dict[int, SortedList] = {}
        self._index_keys: dict[str, tuple[int, tuple[tuple[str, int, int], ...], int]] = {}
        self.version = 0

    # -- membership ---------------------------------------------------------------------

    def add_agent(self, agent: Agent) -> None:
        self.agents[agent.agent_id] = agent
        for gpu in agent.gpus.values():
            self.gpu_owner.setdefault(gpu.uuid, agent.agent_id)
        self.refresh(agent)

    def refresh(self, agent: Agent, capacity_may_grow: bool = True) -> None:
        """Put the agent in, or take it out of, the ask index after anything changed."""
        old = self._offering_keys.pop(agent.agent_id, None)
        if old is not None:
            self._offering.remove(old)
        new_index = None
        if (
            agent.online
            and not agent.revoked
            and agent.ask_per_gpu_hour is not None
            and any(g.offerable for g in agent.gpus.values())
        ):
            key = (agent.ask_per_gpu_hour, agent.agent_id)
            self._offering.add(key)
            self._offering_keys[agent.agent_id] = key
            counts = Counter(
                (g.model, g.memory_total_bytes) for g in agent.gpus.values() if g.offerable
            )
            new_index = (
                agent.ask_per_gpu_hour,
                tuple(sorted((model, memory, _bucket(n)) for (model, memory), n in counts.items())),
                _bucket(sum(counts.values())),
            )
        self._reindex(agent.agent_id, new_index, capacity_may_grow)

    def _reindex(
        self,
        agent_id: str,
        new: tuple[int, tuple[tuple[str, int, int], ...], int] | None,
        capacity_may_grow: bool,
    ) -> None:
        old = self._index_keys.pop(agent_id, None)
        if old == new:
            if new is not None:
                self._index_keys[agent_id] = new
            return
        if capacity_may_grow:
            # the offers changed: auctions that failed before may succeed now
            self.version += 1
        if old is not None:
            ask, keys, free = old
            for key in keys:
                self._by_hardware[key].remove((ask, agent_id))
            self._by_free[free].remove((ask, agent_id))
        if new is not None:
            ask, keys, free = new
            for key in keys:
                self._by_hardware.setdefault(key, SortedList()).add((ask, agent_id))
            self._by_free.setdefault(free, SortedList()).add((ask, agent_id))
            self._index_keys[agent_id] = new

    # -- heartbeats and reconciliation --------------------------------------------------

    def reconcile(
        self, agent: Agent, inventory: Inventory, now_ms: int
    ) -> tuple[list[Gpu], list[Flag]]:
        """Apply a heartbeat's inventory; returns (GPUs this agent now holds for the first time,
        flags raised or cleared: a cleared one has cleared_at_ms).

        Refuses, changing nothing, a report that would make the agent known by more than
        MAX_KNOWN_GPUS GPUs or that names new UUIDs faster than its allowance.
        """
        reported = {report.uuid for report in inventory.gpus}
        kept = sum(
            1 for uuid, gpu in agent.gpus.items() if gpu.claimed_from is None or uuid in reported
        )
        fresh = len(reported - agent.gpus.keys())
        if kept + fresh > MAX_KNOWN_GPUS:
            raise Conflict(
                f"this agent would be known by {kept + fresh} GPUs, more than {MAX_KNOWN_GPUS} "
                "(vanished GPUs count until an operator clears their gpu_missing flag)",
                code="too_many_gpus",
            )
        budget = min(
            float(NEW_UUID_BURST),
            agent.uuid_budget
            + max(0, now_ms - agent.uuid_budget_at_ms) * NEW_UUIDS_PER_HOUR / 3_600_000,
        )
        if fresh > budget:
            wait = int((fresh - budget) * 3_600 / NEW_UUIDS_PER_HOUR) + 1
            raise TooManyRequests(
                f"this heartbeat names {fresh} new GPU UUIDs; an agent may name {NEW_UUID_BURST} "
                f"at first and {NEW_UUIDS_PER_HOUR} an hour after (UUID churn)",
                wait,
                code="uuid_churn",
            )
        agent.uuid_budget, agent.uuid_budget_at_ms = budget - fresh, now_ms

        new_gpus: list[Gpu] = []
        changed: list[Flag] = []
        for report in inventory.gpus:
            owner = self.gpu_owner.get(report.uuid)
            gpu = agent.gpus.get(report.uuid)
            if owner is not None and owner != agent.agent_id:
                if gpu is None:
                    gpu = Gpu(report.uuid, agent.agent_id, report.model, report.memory_total_bytes)
                    agent.gpus[report.uuid] = gpu
                gpu.claimed_from = owner
                self._raise(
                    agent,
                    gpu,
                    FLAG_UUID_CONFLICT,
                    f"GPU {report.uuid} is already held by agent {owner}; this agent's "
                    "claim to it is not offered",
                    now_ms,
                    changed,
                )
            elif gpu is None or gpu.claimed_from is not None:
                # new, or a claim whose holder has let the UUID go: this agent holds it now
                if gpu is None:
                    gpu = Gpu(report.uuid, agent.agent_id, report.model, report.memory_total_bytes)
                    agent.gpus[report.uuid] = gpu
                gpu.claimed_from = None
                gpu.model, gpu.memory_total_bytes = report.model, report.memory_total_bytes
                self.gpu_owner[report.uuid] = agent.agent_id
                self._clear(agent, report.uuid, FLAG_UUID_CONFLICT, now_ms, changed)
                new_gpus.append(gpu)
            elif gpu.memory_total_bytes != report.memory_total_bytes or gpu.model != report.model:
                self._raise(
                    agent,
                    gpu,
                    FLAG_MEMORY_CHANGED,
                    f"GPU {gpu.uuid} was {gpu.model} with {gpu.memory_total_bytes} bytes; "
                    f"now reports {report.model} with {report.memory_total_bytes}",
                    now_ms,
                    changed,
                )
            else:
                self._clear(agent, report.uuid, FLAG_MEMORY_CHANGED, now_ms, changed)
            self._clear(agent, report.uuid, FLAG_MISSING, now_ms, changed)
            gpu.index = report.index
            gpu.healthy = report.healthy
            gpu.health_reason = report.health_reason
            gpu.telemetry = report
        for uuid, gpu in list(agent.gpus.items()):
            if uuid in reported:
                continue
            if gpu.claimed_from is not None:  # the conflicting claim went away, and its flag
                del agent.gpus[uuid]
                self._clear(agent, uuid, FLAG_UUID_CONFLICT, now_ms, changed)
            else:
                self._raise(
                    agent,
                    gpu,
                    FLAG_MISSING,
                    f"GPU {uuid} is no longer reported by its agent",
                    now_ms,
                    changed,
                )
        for uuid, kind in list(agent.flags):  # a claim flagged before a restart, not made again
            if kind == FLAG_UUID_CONFLICT and uuid not in reported:
                self._clear(agent, uuid, kind, now_ms, changed)
        agent.host = inventory.host
        agent.driver_version = inventory.driver_version
        agent.last_seen_ms = now_ms
        agent.online = True
        self.refresh(agent)
        return new_gpus, changed

    @staticmethod
    def _raise(
        agent: Agent, gpu: Gpu, kind: str, detail: str, now_ms: int, changed: list[Flag]
    ) -> None:
        if (gpu.uuid, kind) not in agent.flags:
            entry = Flag(agent.agent_id, gpu.uuid, kind, detail, now_ms)
            agent.flags[(gpu.uuid, kind)] = entry
            changed.append(entry)
        if gpu.flag is None:
            gpu.flag = kind

    @staticmethod
    def _clear(agent: Agent, uuid: str, kind: str, now_ms: int, changed: list[Flag]) -> None:
        entry = agent.flags.pop((uuid, kind), None)
        if entry is not None:
            entry.cleared_at_ms = now_ms
            changed.append(entry)
        gpu = agent.gpus.get(uuid)
        if gpu is not None and gpu.flag == kind:
            gpu.flag = next((k for (u, k) in agent.flags if u == uuid), None)

    def clear_flag(self, agent: Agent, uuid: str, kind: str, now_ms: int) -> list[Gpu]:
        """An operator cleared a flag: the GPU is taken as it is now reported (a claim becomes
        the holding, a changed GPU is believed, a vanished one is forgotten). Returns the GPUs
        whose holding moved to this agent."""
        changed: list[Flag] = []
        self._clear(agent, uuid, kind, now_ms, changed)
        gpu = agent.gpus.get(uuid)
        moved: list[Gpu] = []
        if gpu is None:
            return moved
        if kind == FLAG_UUID_CONFLICT and gpu.claimed_from is not None:
            holder = self.agents.get(gpu.claimed_from)
            if holder is not None and uuid in holder.gpus and holder.gpus[uuid].lease_id is None:
                del holder.gpus[uuid]
                for key in [k for k in holder.flags if k[0] == uuid]:
                    del holder.flags[key]
                self.refresh(holder)
            gpu.claimed_from = None
            self.gpu_owner[uuid] = agent.agent_id
            moved.append(gpu)
        elif kind == FLAG_MEMORY_CHANGED and gpu.telemetry is not None:
            gpu.model, gpu.memory_total_bytes = (
                gpu.telemetry.model,
                gpu.telemetry.memory_total_bytes,
            )
        elif kind == FLAG_MISSING and gpu.lease_id is None:
            del agent.gpus[uuid]
            for key in [k for k in agent.flags if k[0] == uuid]:
                del agent.flags[key]
            if self.gpu_owner.get(uuid) == agent.agent_id:
                del self.gpu_owner[uuid]
        self.refresh(agent)
        return moved

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
        old.gpus, old.flags = {}, {}
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

    # -- auction inputs -----------------------------------------------------------------

    def offer_of(self, agent: Agent, now_ms: int) -> AgentOffer:
        return AgentOffer(
            agent_id=agent.agent_id,
            ask_per_gpu_hour=agent.ask_per_gpu_hour or 0,
            reliability_ppm=agent.reliability_ppm(now_ms, self.half_life_ms),
            free_gpus=tuple(
                GpuOffer(g.uuid, g.model, g.memory_total_bytes, g.healthy)
                for g in agent.free_gpus()
            ),
        )

    def candidates(self, job: JobSpec, now_ms: int, reason_sample: int = 8) -> list[AgentOffer]:
        """The offers that decide the job's auction: every eligible one up to the second ask.

        Walks, cheapest first, only the agents whose free GPUs could fit the job (by model,
        memory and count). When nobody is eligible it returns a few of the offers that came
        closest, so the auction itself names why the job must wait.
        """
        need = _bucket(job.gpu_count)
        excluded = set(job.excluded_agents)
        roomy = [agents for bucket, agents in self._by_free.items() if bucket >= need and agents]
        if not roomy:
            lists: list[SortedList] = []
        elif not job.gpu_models and not job.min_gpu_memory_bytes:
            lists = roomy
        else:
            lists = self._hardware_lists(job, job.min_gpu_memory_bytes)
        eligible: list[AgentOffer] = []
        closest: list[AgentOffer] = []
        second_ask: int | None = None
        for ask, agent_id in _merged(lists):
            if second_ask is not None and ask > second_ask:
                break
            if agent_id in excluded or self._index_keys[agent_id][2] < need:
                continue
            agent = self.agents[agent_id]
            stage = _stage(job, agent, ask)
            if stage == _ELIGIBLE:
                eligible.append(self.offer_of(agent, now_ms))
                if len(eligible) >= 2 and second_ask is None:
                    second_ask = ask
            elif not eligible and stage == _TOO_DEAR:
                closest.append(self.offer_of(agent, now_ms))
                if len(closest) >= reason_sample:
                    break
        if eligible or closest:
            return eligible or closest
        return self._closest_misses(job, now_ms, excluded, roomy, reason_sample)

    def _hardware_lists(self, job: JobSpec, min_memory: int) -> list[SortedList]:
        # an agent with enough suitable GPUs spread over k (model, memory) kinds has at least
        # ceil(need / k) of one kind, so lists with fewer can be skipped
        keys = [
            key
            for key in self._by_hardware
            if (not job.gpu_models or key[0] in job.gpu_models) and key[1] >= min_memory
        ]
        kinds = len({key[:2] for key in keys})
        least = _bucket(-(-job.gpu_count // max(1, kinds)))
        return [self._by_hardware[key] for key in keys if key[2] >= least]

    def _closest_misses(
        self, job: JobSpec, now_ms: int, excluded: set[str], roomy: list[SortedList], sample: int
    ) -> list[AgentOffer]:
        """Nobody could run the job at any price: a few offers from the furthest stage reached."""
        searches: list[tuple[int, list[SortedList]]] = [
            (_MEMORY_SHORT, self._hardware_lists(job, 0)),
            (_WRONG_MODEL, roomy),
            (_TOO_FEW, [self._offering]),
        ]
        if not roomy:
            searches = searches[2:]
        for stage_wanted, lists in searches:
            found = []
            for ask, agent_id in _merged(lists):
                if agent_id in excluded:
                    continue
                agent = self.agents[agent_id]
                if _stage(job, agent, ask) == stage_wanted:
                    found.append(self.offer_of(agent, now_ms))
                    if len(found) >= sample:
                        break
            if found:
                return found
        return []

    # -- leases -------------------------------------------------------------------------

    def assign(self, agent: Agent, gpu_uuids: tuple[str, ...], lease_id: str) -> None:
        for uuid in gpu_uuids:
            agent.gpus[uuid].lease_id = lease_id
        self.refresh(agent, capacity_may_grow=False)

    def release(self, agent_id: str, gpu_uuids: tuple[str, ...], lease_id: str) -> None:
        agent = self.agents.get(agent_id)
        if agent is None:
            return
        for uuid in gpu_uuids:
            gpu = agent.gpus.get(uuid)
            if gpu is not None and gpu.lease_id == lease_id:
                gpu.lease_id = None
        self.refresh(agent)

    # -- views --------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        by_model: dict[str, dict[str, Any]] = {}
        total_milli = 0
        for agent in self.agents.values():
            for gpu in agent.gpus.values():
                if gpu.claimed_from is not None or agent.revoked:
                    continue  # another agent's GPU, or no longer in the market
                row = by_model.setdefault(
                    gpu.model,
                    {
                        "model": gpu.model,
                        "gpus": 0,
                        "free": 0,
                        "leased": 0,
                        "unavailable": 0,
                        "memory_total_bytes": gpu.memory_total_bytes,
                        "asks": [],
                        "tflops_bf16_each": tflops_display(tflops_bf16_milli(gpu.model)),
                    },
                )
                row["gpus"] += 1
                usable = agent.online and gpu.healthy and gpu.flag is None
                if gpu.lease_id is not None:
                    row["leased"] += 1
                elif usable:
                    row["free"] += 1
                    if agent.ask_per_gpu_hour is not None:
                        row["asks"].append(agent.ask_per_gpu_hour)
                else:
                    row["unavailable"] += 1
                if usable or gpu.lease_id is not None:
                    total_milli += tflops_bf16_milli(gpu.model) or 0
        models = []
        for row in sorted(by_model.values(), key=lambda r: r["model"]):
            asks = sorted(row.pop("asks"))
            row["ask_min_micro_yuan"] = asks[0] if asks else None
            row["ask_median_micro_yuan"] = asks[len(asks) // 2] if asks else None
            row["ask_max_micro_yuan"] = asks[-1] if asks else None
            models.append(row)
        return {
            "agents_online": sum(1 for a in self.agents.values() if a.online),
            "agents_total": sum(1 for a in self.agents.values() if not a.revoked),
            "models": models,
            "pflops_bf16_milli": total_milli // 1000,
            "pflops_bf16": f"{total_milli // 1_000_000}.{total_milli // 1000 % 1000:03d}",
        }


_TOO_FEW, _WRONG_MODEL, _MEMORY_SHORT, _TOO_DEAR, _ELIGIBLE = 0, 1, 2, 3, 4


def _bucket(count: int) -> int:
    """Free-GPU counts grouped by powers of two: 1, 2-3, 4-7, 8-15, ..."""
    return count.bit_length()


def _merged(lists: list[SortedList]) -> Iterator[tuple[int, str]]:
    """(ask, agent_id) from several ask-ordered lists, cheapest first, each agent once."""
    seen: set[str] = set()
    for ask, agent_id in heapq.merge(*lists):
        if agent_id not in seen:
            seen.add(agent_id)
            yield ask, agent_id


def _stage(job: JobSpec, agent: Agent, ask: int) -> int:
    """How far an agent gets through the auction's filters (mirrors shared.auction)."""
    enough = model_ok = memory_ok = 0
    models = job.gpu_models
    for gpu in agent.gpus.values():
        if not gpu.offerable:
            continue
        enough += 1
        if models and gpu.model not in models:
            continue
        model_ok += 1
        if gpu.memory_total_bytes < job.min_gpu_memory_bytes:
            continue
        memory_ok += 1
    if enough < job.gpu_count:
        return _TOO_FEW
    if model_ok < job.gpu_count:
        return _WRONG_MODEL
    if memory_ok < job.gpu_count:
        return _MEMORY_SHORT
    if ask > job.max_price_per_gpu_hour:
        return _TOO_DEAR
    return _ELIGIBLE
