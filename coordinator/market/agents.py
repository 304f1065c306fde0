"""What the market holds about each agent: its GPUs, its open flags, its ask and standing."""

from __future__ import annotations

from dataclasses import dataclass, field

from coordinator.market.capacity import MAX_GPUS_PER_AGENT, GpuReport, HostReport
from shared.auction import AgentOffer, GpuOffer
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
    # heartbeats received and not yet answered (their writes are committing)
    heartbeats_in_hand: int = 0
    # lease id -> the scratch bytes its job holds on this agent, while the lease is active
    scratch_held: dict[str, int] = field(default_factory=dict)

    def free_gpus(self) -> list[Gpu]:
        return sorted((g for g in self.gpus.values() if g.offerable), key=lambda g: g.index)

    @property
    def egress_allowed(self) -> bool:
        return self.host is not None and self.host.egress_allowed

    def scratch_free_bytes(self) -> int:
        """The scratch its latest heartbeat reports, less what its active leases hold (the
        agent counts its own volumes as free: it cannot know of a lease before its poll)."""
        reported = self.host.scratch_free_bytes if self.host is not None else None
        if not reported:
            return 0
        return max(0, reported - sum(self.scratch_held.values()))

    def reliability_ppm(self, now_ms: int, half_life_ms: int) -> int:
        halvings = max(0, now_ms - self.penalty_at_ms) // max(1, half_life_ms)
        penalty = self.penalty_ppm >> min(halvings, 62)
        return max(0, RELIABILITY_MAX - penalty)

    def offer(self, now_ms: int, half_life_ms: int) -> AgentOffer:
        """This agent's sealed offer as an auction round sees it now."""
        return AgentOffer(
            agent_id=self.agent_id,
            ask_per_gpu_hour=self.ask_per_gpu_hour or 0,
            reliability_ppm=self.reliability_ppm(now_ms, half_life_ms),
            free_gpus=tuple(
                GpuOffer(g.uuid, g.model, g.memory_total_bytes, g.healthy) for g in self.free_gpus()
            ),
            egress_allowed=self.egress_allowed,
            scratch_free_bytes=self.scratch_free_bytes(),
        )
