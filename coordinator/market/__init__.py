"""The market's hot state: agents, their GPUs, asks and liveness, kept in memory.

`capacity` maps what a heartbeat claims, `reconcile` believes it only when it agrees with
what was seen before, `index` keeps the agents with free GPUs ordered by ask for the
auctions, `summary` reports the capacity, and `book.Market` keeps them in step.
"""

from coordinator.market.agents import (
    FLAG_KINDS,
    FLAG_MEMORY_CHANGED,
    FLAG_MISSING,
    FLAG_UUID_CONFLICT,
    MAX_KNOWN_GPUS,
    NEW_UUID_BURST,
    NEW_UUIDS_PER_HOUR,
    RELIABILITY_MAX,
    Agent,
    Flag,
    Gpu,
)
from coordinator.market.book import Market
from coordinator.market.capacity import (
    MAX_GPUS_PER_AGENT,
    GpuReport,
    HostReport,
    Inventory,
    parse_inventory,
)

__all__ = [
    "FLAG_KINDS",
    "FLAG_MEMORY_CHANGED",
    "FLAG_MISSING",
    "FLAG_UUID_CONFLICT",
    "MAX_GPUS_PER_AGENT",
    "MAX_KNOWN_GPUS",
    "NEW_UUIDS_PER_HOUR",
    "NEW_UUID_BURST",
    "RELIABILITY_MAX",
    "Agent",
    "Flag",
    "Gpu",
    "GpuReport",
    "HostReport",
    "Inventory",
    "Market",
    "parse_inventory",
]
