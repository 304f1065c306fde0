"""A heartbeat's inventory reconciled with what the market saw before, and capacity flags.

Capacity is believed only when it reconciles: a GPU whose memory size changes, or a GPU
that disappears, is flagged and taken out of the market; a GPU UUID that another agent
already holds flags the newcomer's claim, never the holder's GPU (UUIDs are public, so
anyone could name them). A flag clears when what raised it goes away, or when an operator
clears it. What one agent can make the market remember is bounded: GPUs it is known to
have (claims and vanished ones included) and how fast it may name new UUIDs.
"""

from __future__ import annotations

from coordinator.errors import Conflict, TooManyRequests
from coordinator.market.agents import (
    FLAG_MEMORY_CHANGED,
    FLAG_MISSING,
    FLAG_UUID_CONFLICT,
    MAX_KNOWN_GPUS,
    NEW_UUID_BURST,
    NEW_UUIDS_PER_HOUR,
    Agent,
    Flag,
    Gpu,
)
from coordinator.market.capacity import Inventory


def reconcile(
    agent: Agent, inventory: Inventory, now_ms: int, gpu_owner: dict[str, str]
) -> tuple[list[Gpu], list[Flag]]:
    """Apply a heartbeat's inventory; returns (GPUs this agent now holds for the first time,
    flags raised or cleared: a cleared one has cleared_at_ms).

    Refuses, changing nothing, a report that would make the agent known by more than
    MAX_KNOWN_GPUS GPUs or that names new UUIDs faster than its allowance. `gpu_owner`
    (GPU UUID -> the agent holding it) is updated for the UUIDs this agent comes to hold.
    """
    reported = {report.uuid for report in inventory.gpus}
    _admit(agent, reported, now_ms)
    new_gpus: list[Gpu] = []
    changed: list[Flag] = []
    for report in inventory.gpus:
        owner = gpu_owner.get(report.uuid)
        gpu = agent.gpus.get(report.uuid)
        if owner is not None and owner != agent.agent_id:
            if gpu is None:
                gpu = Gpu(report.uuid, agent.agent_id, report.model, report.memory_total_bytes)
                agent.gpus[report.uuid] = gpu
            gpu.claimed_from = owner
            raise_flag(
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
            gpu_owner[report.uuid] = agent.agent_id
            clear_flag_kind(agent, report.uuid, FLAG_UUID_CONFLICT, now_ms, changed)
            new_gpus.append(gpu)
        elif gpu.memory_total_bytes != report.memory_total_bytes or gpu.model != report.model:
            raise_flag(
                agent,
                gpu,
                FLAG_MEMORY_CHANGED,
                f"GPU {gpu.uuid} was {gpu.model} with {gpu.memory_total_bytes} bytes; "
                f"now reports {report.model} with {report.memory_total_bytes}",
                now_ms,
                changed,
            )
        elif agent.flags or gpu.flag is not None:  # else there is no flag to clear
            clear_flag_kind(agent, report.uuid, FLAG_MEMORY_CHANGED, now_ms, changed)
        if agent.flags or gpu.flag is not None:
            clear_flag_kind(agent, report.uuid, FLAG_MISSING, now_ms, changed)
        gpu.index = report.index
        gpu.healthy = report.healthy
        gpu.health_reason = report.health_reason
        gpu.telemetry = report
    for uuid, gpu in list(agent.gpus.items()):
        if uuid in reported:
            continue
        if gpu.claimed_from is not None:  # the conflicting claim went away, and its flag
            del agent.gpus[uuid]
            clear_flag_kind(agent, uuid, FLAG_UUID_CONFLICT, now_ms, changed)
        else:
            raise_flag(
                agent,
                gpu,
                FLAG_MISSING,
                f"GPU {uuid} is no longer reported by its agent",
                now_ms,
                changed,
            )
    for uuid, kind in list(agent.flags):  # a claim flagged before a restart, not made again
        if kind == FLAG_UUID_CONFLICT and uuid not in reported:
            clear_flag_kind(agent, uuid, kind, now_ms, changed)
    agent.host = inventory.host
    agent.driver_version = inventory.driver_version
    agent.last_seen_ms = now_ms
    agent.online = True
    return new_gpus, changed


def _admit(agent: Agent, reported: set[str], now_ms: int) -> None:
    """Refuse a report over the agent's bounds; otherwise spend its new-UUID allowance."""
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


def raise_flag(
    agent: Agent, gpu: Gpu, kind: str, detail: str, now_ms: int, changed: list[Flag]
) -> None:
    """Open a flag of this kind on the GPU unless one is open already."""
    if (gpu.uuid, kind) not in agent.flags:
        entry = Flag(agent.agent_id, gpu.uuid, kind, detail, now_ms)
        agent.flags[(gpu.uuid, kind)] = entry
        changed.append(entry)
    if gpu.flag is None:
        gpu.flag = kind


def clear_flag_kind(agent: Agent, uuid: str, kind: str, now_ms: int, changed: list[Flag]) -> None:
    """Close the GPU's open flag of this kind, if any; the GPU keeps any other open flag."""
    entry = agent.flags.pop((uuid, kind), None)
    if entry is not None:
        entry.cleared_at_ms = now_ms
        changed.append(entry)
    gpu = agent.gpus.get(uuid)
    if gpu is not None and gpu.flag == kind:
        gpu.flag = next((k for (u, k) in agent.flags if u == uuid), None)


def operator_clear(
    agents: dict[str, Agent],
    gpu_owner: dict[str, str],
    agent: Agent,
    uuid: str,
    kind: str,
    now_ms: int,
) -> tuple[list[Gpu], Agent | None]:
    """An operator cleared a flag: the GPU is taken as it is now reported (a claim becomes
    the holding, a changed GPU is believed, a vanished one is forgotten).

    Returns the GPUs whose holding moved to this agent, and the former holder when it gave
    one up (its offers changed too).
    """
    changed: list[Flag] = []
    clear_flag_kind(agent, uuid, kind, now_ms, changed)
    gpu = agent.gpus.get(uuid)
    moved: list[Gpu] = []
    former: Agent | None = None
    if gpu is None:
        return moved, former
    if kind == FLAG_UUID_CONFLICT and gpu.claimed_from is not None:
        holder = agents.get(gpu.claimed_from)
        if holder is not None and uuid in holder.gpus and holder.gpus[uuid].lease_id is None:
            del holder.gpus[uuid]
            for key in [k for k in holder.flags if k[0] == uuid]:
                del holder.flags[key]
            former = holder
        gpu.claimed_from = None
        gpu_owner[uuid] = agent.agent_id
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
        if gpu_owner.get(uuid) == agent.agent_id:
            del gpu_owner[uuid]
    return moved, former
