"""The values an auction round is made of: the job, the offers, the outcome, and the reasons
nobody won. Each checks its fields when built, so a round's inputs are well formed."""

from __future__ import annotations

from dataclasses import dataclass

from shared.errors import SuanliError

RELIABILITY_MAX_PPM = 1_000_000
# msgpack's largest signed integer: every int here must survive the canonical encoding.
INT_MAX = 2**63 - 1

NO_AGENT_WITH_ENOUGH_GPUS = "no_agent_with_enough_gpus"
NO_AGENT_WITH_THAT_MODEL = "no_agent_with_that_model"
NO_AGENT_WITH_ENOUGH_GPU_MEMORY = "no_agent_with_enough_gpu_memory"
NO_AGENT_ALLOWS_EGRESS = "no_agent_allows_egress"
NO_AGENT_WITH_ENOUGH_SCRATCH = "no_agent_with_enough_scratch"
NO_AGENT_AT_OR_BELOW_MAX_PRICE = "no_agent_at_or_below_max_price"
# The screening funnel in order; an offer's stage is how many of these filters it passed.
REASONS = (
    NO_AGENT_WITH_ENOUGH_GPUS,
    NO_AGENT_WITH_THAT_MODEL,
    NO_AGENT_WITH_ENOUGH_GPU_MEMORY,
    NO_AGENT_ALLOWS_EGRESS,
    NO_AGENT_WITH_ENOUGH_SCRATCH,
    NO_AGENT_AT_OR_BELOW_MAX_PRICE,
)


class AuctionError(SuanliError):
    """The inputs of an auction round, or a recorded round, are malformed."""

    code = "bad_auction"


def need_int(value: object, what: str, low: int = 0, high: int = INT_MAX) -> None:
    # `type(...) is int` refuses bools and int subclasses, which would encode differently.
    if type(value) is not int or not low <= value <= high:
        raise AuctionError(f"{what} must be an integer from {low} to {high}, not {value!r}")


def need_str(value: object, what: str) -> None:
    if type(value) is not str or not value:
        raise AuctionError(f"{what} must be a non-empty string, not {value!r}")


def need_bool(value: object, what: str) -> None:
    if type(value) is not bool:
        raise AuctionError(f"{what} must be true or false, not {value!r}")


def need_str_tuple(value: object, what: str) -> None:
    if type(value) is not tuple:
        raise AuctionError(f"{what} must be a tuple of strings, not {type(value).__name__}")
    for item in value:
        need_str(item, f"each of {what}")


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What a job needs from one agent, and the most it pays per GPU-hour (µ¥)."""

    job_id: str
    gpu_count: int
    min_gpu_memory_bytes: int
    gpu_models: tuple[str, ...]  # empty: any model
    max_price_per_gpu_hour: int
    excluded_agents: tuple[str, ...] = ()  # e.g. agents that already lost this job
    egress: bool = False  # the job asks for network egress
    scratch_bytes: int = 0  # the job asks for a scratch volume of this size

    def __post_init__(self) -> None:
        need_str(self.job_id, "a job's job_id")
        need_int(self.gpu_count, "a job's gpu_count", low=1)
        need_int(self.min_gpu_memory_bytes, "a job's min_gpu_memory_bytes")
        need_str_tuple(self.gpu_models, "a job's gpu_models")
        need_int(self.max_price_per_gpu_hour, "a job's max_price_per_gpu_hour")
        need_str_tuple(self.excluded_agents, "a job's excluded_agents")
        need_bool(self.egress, "a job's egress flag")
        need_int(self.scratch_bytes, "a job's scratch_bytes")


@dataclass(frozen=True, slots=True)
class GpuOffer:
    """One free (unleased) GPU of an agent as its latest heartbeat reported it."""

    uuid: str
    model: str
    memory_total_bytes: int
    healthy: bool

    def __post_init__(self) -> None:
        need_str(self.uuid, "a GPU's uuid")
        need_str(self.model, "a GPU's model")
        need_int(self.memory_total_bytes, "a GPU's memory_total_bytes")
        if type(self.healthy) is not bool:
            raise AuctionError(f"a GPU's healthy flag must be true or false, not {self.healthy!r}")


@dataclass(frozen=True, slots=True)
class AgentOffer:
    """An agent's sealed ask (µ¥ per GPU-hour), its reliability score, its free GPUs, whether
    it allows egress, and the scratch space it has free (its other leases' scratch deducted)."""

    agent_id: str
    ask_per_gpu_hour: int
    reliability_ppm: int
    free_gpus: tuple[GpuOffer, ...]
    egress_allowed: bool = False
    scratch_free_bytes: int = 0

    def __post_init__(self) -> None:
        need_str(self.agent_id, "an offer's agent_id")
        need_int(self.ask_per_gpu_hour, f"the ask of agent {self.agent_id}")
        need_int(
            self.reliability_ppm,
            f"the reliability of agent {self.agent_id}",
            high=RELIABILITY_MAX_PPM,
        )
        if type(self.free_gpus) is not tuple or any(
            type(gpu) is not GpuOffer for gpu in self.free_gpus
        ):
            raise AuctionError(
                f"the free_gpus of agent {self.agent_id} must be a tuple of GpuOffer"
            )
        need_bool(self.egress_allowed, f"the egress flag of agent {self.agent_id}")
        need_int(self.scratch_free_bytes, f"the free scratch of agent {self.agent_id}")
        if len({gpu.uuid for gpu in self.free_gpus}) != len(self.free_gpus):
            raise AuctionError(f"agent {self.agent_id} lists the same GPU uuid more than once")


@dataclass(frozen=True, slots=True)
class Outcome:
    """A round's result: the winner, its GPUs and price, or why nobody won."""

    job_id: str
    winner: str | None
    gpu_uuids: tuple[str, ...]
    price_per_gpu_hour: int | None
    eligible: tuple[str, ...]  # agent ids in rank order, the winner first
    reason: str | None  # one of REASONS when nobody won
    reason_detail: str  # one sentence for people
