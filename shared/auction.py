"""The sealed-bid reverse auction: a pure function of a round's inputs that auditors replay.

`run_auction(job, offers)` picks the winner and its price; the coordinator records each
round with `round_record` and anyone can recompute it with `replay`. Everything is an
int, str, bool or tuple (money in micro-yuan per GPU-hour, reliability in parts per
million), so a replay on any machine gives the same outcome bit for bit.

Rules: an offer is eligible when its agent is not excluded from the job, its ask is at
or below the job's max price, and it has at least `gpu_count` free GPUs that are healthy,
of an allowed model (any model when the job names none) and with at least the job's
minimum memory. The lowest ask wins (ties: higher reliability, then lower agent_id).
The price is the second-lowest eligible ask, capped at the job's max price; with one
eligible offer it is the job's max price. The winner gets the first `gpu_count`
qualifying GPUs in the order its offer lists them (the agent lists them by NVML index),
so a round's record fixes the choice.

Wire format (msgpack-ready: positional arrays of ints, strs, bools and None, no maps,
no floats; a decoder accepts lists or tuples and returns the dataclasses):

    job     = [job_id, gpu_count, min_gpu_memory_bytes, [gpu_model, ...],
               max_price_per_gpu_hour, [excluded_agent_id, ...]]
    gpu     = [uuid, model, memory_total_bytes, healthy]
    offer   = [agent_id, ask_per_gpu_hour, reliability_ppm, [gpu, ...]]
    outcome = [job_id, winner_agent_id | None, [gpu_uuid, ...],
               price_per_gpu_hour | None, [eligible_agent_id, ...] (rank order),
               reason | None, reason_detail]
    round   = [ROUND_VERSION, job, [offer, ...] (sorted by agent_id), outcome]

`replay` compares everything that decides the round (job id, winner, GPUs, price,
ranking, reason code) but not `reason_detail`, whose wording may improve without
making old rounds fail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.errors import SuanliError

__all__ = [
    "NO_AGENT_AT_OR_BELOW_MAX_PRICE",
    "NO_AGENT_WITH_ENOUGH_GPUS",
    "NO_AGENT_WITH_ENOUGH_GPU_MEMORY",
    "NO_AGENT_WITH_THAT_MODEL",
    "REASONS",
    "RELIABILITY_MAX_PPM",
    "ROUND_VERSION",
    "AgentOffer",
    "AuctionError",
    "GpuOffer",
    "JobSpec",
    "Outcome",
    "eligible_offers",
    "job_from_wire",
    "job_to_wire",
    "offers_from_wire",
    "offers_to_wire",
    "outcome_from_wire",
    "outcome_to_wire",
    "replay",
    "replay_round",
    "round_from_record",
    "round_record",
    "run_auction",
]

ROUND_VERSION = 1
RELIABILITY_MAX_PPM = 1_000_000
# msgpack's largest signed integer: every int here must survive the canonical encoding.
_INT_MAX = 2**63 - 1
_GIB = 1 << 30

NO_AGENT_WITH_ENOUGH_GPUS = "no_agent_with_enough_gpus"
NO_AGENT_WITH_THAT_MODEL = "no_agent_with_that_model"
NO_AGENT_WITH_ENOUGH_GPU_MEMORY = "no_agent_with_enough_gpu_memory"
NO_AGENT_AT_OR_BELOW_MAX_PRICE = "no_agent_at_or_below_max_price"
# The screening funnel in order; an offer's stage is how many of these filters it passed.
REASONS = (
    NO_AGENT_WITH_ENOUGH_GPUS,
    NO_AGENT_WITH_THAT_MODEL,
    NO_AGENT_WITH_ENOUGH_GPU_MEMORY,
    NO_AGENT_AT_OR_BELOW_MAX_PRICE,
)
_HARDWARE_OK = 3
_ELIGIBLE = 4


class AuctionError(SuanliError):
    """The inputs of an auction round, or a recorded round, are malformed."""

    code = "bad_auction"


def _need_int(value: object, what: str, low: int = 0, high: int = _INT_MAX) -> None:
    # `type(...) is int` refuses bools and int subclasses, which would encode differently.
    if type(value) is not int or not low <= value <= high:
        raise AuctionError(f"{what} must be an integer from {low} to {high}, not {value!r}")


def _need_str(value: object, what: str) -> None:
    if type(value) is not str or not value:
        raise AuctionError(f"{what} must be a non-empty string, not {value!r}")


def _need_str_tuple(value: object, what: str) -> None:
    if type(value) is not tuple:
        raise AuctionError(f"{what} must be a tuple of strings, not {type(value).__name__}")
    for item in value:
        _need_str(item, f"each of {what}")


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What a job needs from one agent, and the most it pays per GPU-hour (µ¥)."""

    job_id: str
    gpu_count: int
    min_gpu_memory_bytes: int
    gpu_models: tuple[str, ...]  # empty: any model
    max_price_per_gpu_hour: int
    excluded_agents: tuple[str, ...] = ()  # e.g. agents that already lost this job

    def __post_init__(self) -> None:
        _need_str(self.job_id, "a job's job_id")
        _need_int(self.gpu_count, "a job's gpu_count", low=1)
        _need_int(self.min_gpu_memory_bytes, "a job's min_gpu_memory_bytes")
        _need_str_tuple(self.gpu_models, "a job's gpu_models")
        _need_int(self.max_price_per_gpu_hour, "a job's max_price_per_gpu_hour")
        _need_str_tuple(self.excluded_agents, "a job's excluded_agents")


@dataclass(frozen=True, slots=True)
class GpuOffer:
    """One free (unleased) GPU of an agent as its latest heartbeat reported it."""

    uuid: str
    model: str
    memory_total_bytes: int
    healthy: bool

    def __post_init__(self) -> None:
        _need_str(self.uuid, "a GPU's uuid")
        _need_str(self.model, "a GPU's model")
        _need_int(self.memory_total_bytes, "a GPU's memory_total_bytes")
        if type(self.healthy) is not bool:
            raise AuctionError(f"a GPU's healthy flag must be true or false, not {self.healthy!r}")


@dataclass(frozen=True, slots=True)
class AgentOffer:
    """An agent's sealed ask (µ¥ per GPU-hour), its reliability score and its free GPUs."""

    agent_id: str
    ask_per_gpu_hour: int
    reliability_ppm: int
    free_gpus: tuple[GpuOffer, ...]

    def __post_init__(self) -> None:
        _need_str(self.agent_id, "an offer's agent_id")
        _need_int(self.ask_per_gpu_hour, f"the ask of agent {self.agent_id}")
        _need_int(
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


def _rank_key(offer: AgentOffer) -> tuple[int, int, str]:
    return (offer.ask_per_gpu_hour, -offer.reliability_ppm, offer.agent_id)


def _qualifies(gpu: GpuOffer, models: tuple[str, ...], min_memory: int) -> bool:
    return (
        gpu.healthy and (not models or gpu.model in models) and gpu.memory_total_bytes >= min_memory
    )


def _hardware_stage(job: JobSpec, gpus: tuple[GpuOffer, ...]) -> int:
    """How many hardware filters (count, model, memory) these GPUs pass for the job."""
    need = job.gpu_count
    if len(gpus) < need:
        return 0
    models = job.gpu_models
    min_memory = job.min_gpu_memory_bytes
    healthy = of_model = fitting = 0
    for gpu in gpus:
        if not gpu.healthy:
            continue
        healthy += 1
        if models and gpu.model not in models:
            continue
        of_model += 1
        if gpu.memory_total_bytes >= min_memory:
            fitting += 1
            if fitting == need:
                return _HARDWARE_OK
    if of_model >= need:
        return 2
    if healthy >= need:
        return 1
    return 0


@dataclass(slots=True)
class _Screening:
    ranked: list[AgentOffer]
    stage: int  # the furthest any offer got through the funnel
    considered: int  # offers from agents not excluded
    runnable_too_dear: int  # offers that pass the hardware filters but ask too much


def _screen(job: JobSpec, offers: Sequence[AgentOffer]) -> _Screening:
    if type(job) is not JobSpec:
        raise AuctionError(f"an auction needs a JobSpec, not {type(job).__name__}")
    excluded = frozenset(job.excluded_agents) if job.excluded_agents else ()
    max_price = job.max_price_per_gpu_hour
    seen: set[str] = set()
    ranked: list[AgentOffer] = []
    too_dear: list[AgentOffer] = []
    stage = 0
    considered = 0
    for offer in offers:
        if type(offer) is not AgentOffer:
            raise AuctionError(
                f"an auction's offers must be AgentOffer, not {type(offer).__name__}"
            )
        agent_id = offer.agent_id
        if agent_id in seen:
            raise AuctionError(f"agent {agent_id} made more than one offer in the same round")
        seen.add(agent_id)
        if agent_id in excluded:
            continue
        considered += 1
        # The price test is O(1), so it runs first; the hardware stage of offers it
        # removes is only needed to explain a round that nobody won.
        if offer.ask_per_gpu_hour > max_price:
            too_dear.append(offer)
            continue
        offer_stage = _hardware_stage(job, offer.free_gpus)
        if offer_stage == _HARDWARE_OK:
            ranked.append(offer)
        elif offer_stage > stage:
            stage = offer_stage
    runnable_too_dear = 0
    if ranked:
        stage = _ELIGIBLE
        ranked.sort(key=_rank_key)
    else:
        for offer in too_dear:
            offer_stage = _hardware_stage(job, offer.free_gpus)
            if offer_stage == _HARDWARE_OK:
                runnable_too_dear += 1
            stage = max(stage, offer_stage)
    return _Screening(ranked, stage, considered, runnable_too_dear)


def eligible_offers(job: JobSpec, offers: Sequence[AgentOffer]) -> tuple[AgentOffer, ...]:
    """The offers that may win the job, best first."""
    return tuple(_screen(job, offers).ranked)


def _memory_text(n: int) -> str:
    return f"{n // _GIB} GiB" if n % _GIB == 0 else f"{n} bytes"


def _no_winner_detail(job: JobSpec, reason: str, screening: _Screening) -> str:
    if screening.considered == 0:
        return "no agent (other than any excluded from this job) offered GPUs in this round"
    considered = f"(agents considered: {screening.considered})"
    gpus = f"{job.gpu_count} free healthy GPU" + ("" if job.gpu_count == 1 else "s")
    models = f" of model {', '.join(job.gpu_models)}" if job.gpu_models else ""
    if reason == NO_AGENT_WITH_ENOUGH_GPUS:
        return f"no agent has {gpus} {considered}"
    if reason == NO_AGENT_WITH_THAT_MODEL:
        return f"no agent has {gpus}{models} {considered}"
    if reason == NO_AGENT_WITH_ENOUGH_GPU_MEMORY:
        memory = _memory_text(job.min_gpu_memory_bytes)
        return f"no agent has {gpus}{models} with at least {memory} each {considered}"
    runnable = screening.runnable_too_dear
    return (
        f"{runnable} agent{'' if runnable == 1 else 's'} could run the job, but "
        f"{'it asks' if runnable == 1 else 'all ask'} more than its max price of "
        f"{job.max_price_per_gpu_hour} µ¥ per GPU-hour {considered}"
    )


def run_auction(job: JobSpec, offers: Sequence[AgentOffer]) -> Outcome:
    """Run one sealed-bid round; the outcome does not depend on the order of `offers`.

    When nobody wins, `reason` names the last filter that removed the remaining
    candidates, taking the filters in the order enough free healthy GPUs, allowed
    model, enough memory, max price: that is the constraint whose relaxation would
    bring the most promising agent into play. With no candidates at all (no offers,
    or every offer excluded) the reason is `no_agent_with_enough_gpus`.
    """
    screening = _screen(job, offers)
    ranked = screening.ranked
    if not ranked:
        reason = REASONS[screening.stage]
        return Outcome(
            job.job_id, None, (), None, (), reason, _no_winner_detail(job, reason, screening)
        )
    winner = ranked[0]
    if len(ranked) > 1:
        price = min(ranked[1].ask_per_gpu_hour, job.max_price_per_gpu_hour)
        basis = "the second-lowest eligible ask"
    else:
        price = job.max_price_per_gpu_hour
        basis = "the job's max price, as the only eligible offer"
    need, models, min_memory = job.gpu_count, job.gpu_models, job.min_gpu_memory_bytes
    picked: list[str] = []
    for gpu in winner.free_gpus:
        if _qualifies(gpu, models, min_memory):
            picked.append(gpu.uuid)
            if len(picked) == need:
                break
    detail = (
        f"agent {winner.agent_id} won with the lowest of {len(ranked)} eligible "
        f"ask{'' if len(ranked) == 1 else 's'}; the price is {price} µ¥ per GPU-hour, {basis}"
    )
    return Outcome(
        job.job_id,
        winner.agent_id,
        tuple(picked),
        price,
        tuple(offer.agent_id for offer in ranked),
        None,
        detail,
    )


# --- wire format ---------------------------------------------------------------------------


def _need_array(value: object, length: int, what: str) -> Sequence[Any]:
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise AuctionError(f"{what} must be an array of {length} items")
    return value


def _need_list(value: object, what: str) -> Sequence[Any]:
    if not isinstance(value, (list, tuple)):
        raise AuctionError(f"{what} must be an array")
    return value


def job_to_wire(job: JobSpec) -> list[Any]:
    return [
        job.job_id,
        job.gpu_count,
        job.min_gpu_memory_bytes,
        list(job.gpu_models),
        job.max_price_per_gpu_hour,
        list(job.excluded_agents),
    ]


def job_from_wire(value: object) -> JobSpec:
    job_id, gpu_count, min_memory, models, max_price, excluded = _need_array(value, 6, "a job")
    return JobSpec(
        job_id,
        gpu_count,
        min_memory,
        tuple(_need_list(models, "a job's gpu_models")),
        max_price,
        tuple(_need_list(excluded, "a job's excluded_agents")),
    )


def offers_to_wire(offers: Sequence[AgentOffer]) -> list[Any]:
    """Offers as arrays, in the caller's order (`round_record` sorts them by agent_id)."""
    return [
        [
            offer.agent_id,
            offer.ask_per_gpu_hour,
            offer.reliability_ppm,
            [[g.uuid, g.model, g.memory_total_bytes, g.healthy] for g in offer.free_gpus],
        ]
        for offer in offers
    ]


def offers_from_wire(value: object) -> tuple[AgentOffer, ...]:
    offers = []
    for item in _need_list(value, "a round's offers"):
        agent_id, ask, reliability, gpus = _need_array(item, 4, "an offer")
        free_gpus = tuple(
            GpuOffer(*_need_array(gpu, 4, "an offer's GPU"))
            for gpu in _need_list(gpus, "an offer's free GPUs")
        )
        offers.append(AgentOffer(agent_id, ask, reliability, free_gpus))
    return tuple(offers)


def outcome_to_wire(outcome: Outcome) -> list[Any]:
    return [
        outcome.job_id,
        outcome.winner,
        list(outcome.gpu_uuids),
        outcome.price_per_gpu_hour,
        list(outcome.eligible),
        outcome.reason,
        outcome.reason_detail,
    ]


def outcome_from_wire(value: object) -> Outcome:
    job_id, winner, uuids, price, eligible, reason, detail = _need_array(value, 7, "an outcome")
    _need_str(job_id, "an outcome's job_id")
    gpu_uuids = tuple(_need_list(uuids, "an outcome's gpu_uuids"))
    ranked = tuple(_need_list(eligible, "an outcome's eligible agents"))
    for item in gpu_uuids + ranked:
        _need_str(item, "each GPU uuid and agent id of an outcome")
    if type(detail) is not str:
        raise AuctionError(f"an outcome's reason_detail must be a string, not {detail!r}")
    if winner is None:
        if price is not None or gpu_uuids or ranked or reason not in REASONS:
            raise AuctionError(
                "an outcome without a winner must have no price, GPUs or eligible agents "
                f"and one of the reasons {', '.join(REASONS)}"
            )
    else:
        _need_str(winner, "an outcome's winner")
        _need_int(price, "an outcome's price_per_gpu_hour")
        if reason is not None or not ranked or ranked[0] != winner or not gpu_uuids:
            raise AuctionError(
                "an outcome with a winner must rank it first, name its GPUs and give no reason"
            )
    return Outcome(job_id, winner, gpu_uuids, price, ranked, reason, detail)


def round_record(job: JobSpec, offers: Sequence[AgentOffer], outcome: Outcome) -> list[Any]:
    """The recorded form of a round; offers are sorted by agent_id so one round has one record."""
    ordered = sorted(offers, key=lambda offer: offer.agent_id)
    return [ROUND_VERSION, job_to_wire(job), offers_to_wire(ordered), outcome_to_wire(outcome)]


def round_from_record(record: object) -> tuple[JobSpec, tuple[AgentOffer, ...], Outcome]:
    version, job, offers, outcome = _need_array(record, 4, "an auction round record")
    if type(version) is not int or version != ROUND_VERSION:
        raise AuctionError(
            f"this code replays auction rounds of version {ROUND_VERSION}, not {version!r}"
        )
    return job_from_wire(job), offers_from_wire(offers), outcome_from_wire(outcome)


def replay_round(record: object) -> Outcome:
    """Recompute a recorded round's outcome from its recorded inputs."""
    job, offers, _ = round_from_record(record)
    return run_auction(job, offers)


def _decision(outcome: Outcome) -> tuple[Any, ...]:
    return (
        outcome.job_id,
        outcome.winner,
        outcome.gpu_uuids,
        outcome.price_per_gpu_hour,
        outcome.eligible,
        outcome.reason,
    )


def replay(record: object) -> bool:
    """True when recomputing a recorded round gives its recorded decision.

    A malformed record raises `AuctionError` rather than returning False, so an
    auditor can tell a broken record from a rigged one.
    """
    job, offers, recorded = round_from_record(record)
    return _decision(run_auction(job, offers)) == _decision(recorded)
