"""The auction rule: who is eligible, who wins, at what price, and why nobody won.

Rules: an offer is eligible when its agent is not excluded from the job, its ask is at
or below the job's max price, it has at least `gpu_count` free GPUs that are healthy,
of an allowed model (any model when the job names none) and with at least the job's
minimum memory, it allows egress when the job asks for it, and its free scratch space
covers the job's scratch. The lowest ask wins (ties: higher reliability, then lower agent_id).
The price is the second-lowest eligible ask, capped at the job's max price; with one
eligible offer it is the job's max price. The winner gets the first `gpu_count`
qualifying GPUs in the order its offer lists them (the agent lists them by NVML index),
so a round's record fixes the choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shared.auction.values import (
    NO_AGENT_ALLOWS_EGRESS,
    NO_AGENT_WITH_ENOUGH_GPU_MEMORY,
    NO_AGENT_WITH_ENOUGH_GPUS,
    NO_AGENT_WITH_ENOUGH_SCRATCH,
    NO_AGENT_WITH_THAT_MODEL,
    REASONS,
    AgentOffer,
    AuctionError,
    GpuOffer,
    JobSpec,
    Outcome,
)
from shared.money import format_money

_GIB = 1 << 30
_HARDWARE_OK = 3
_RUNNABLE = 5  # hardware, egress and scratch all fit: only the price is left
_ELIGIBLE = 6


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


def _offer_stage(job: JobSpec, offer: AgentOffer) -> int:
    """How many filters before the price (hardware, egress, scratch) the offer passes."""
    stage = _hardware_stage(job, offer.free_gpus)
    if stage < _HARDWARE_OK:
        return stage
    if job.egress and not offer.egress_allowed:
        return _HARDWARE_OK
    if offer.scratch_free_bytes < job.scratch_bytes:
        return _HARDWARE_OK + 1
    return _RUNNABLE


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
        offer_stage = _offer_stage(job, offer)
        if offer_stage == _RUNNABLE:
            ranked.append(offer)
        elif offer_stage > stage:
            stage = offer_stage
    runnable_too_dear = 0
    if ranked:
        stage = _ELIGIBLE
        ranked.sort(key=_rank_key)
    else:
        for offer in too_dear:
            offer_stage = _offer_stage(job, offer)
            if offer_stage == _RUNNABLE:
                runnable_too_dear += 1
            stage = max(stage, offer_stage)
    return _Screening(ranked, stage, considered, runnable_too_dear)


def eligible_offers(job: JobSpec, offers: Sequence[AgentOffer]) -> tuple[AgentOffer, ...]:
    """The offers that may win the job, best first."""
    return tuple(_screen(job, offers).ranked)


def _memory_text(n: int) -> str:
    if n % _GIB == 0:
        return f"{n // _GIB} GiB"
    if n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    return f"{n} bytes"


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
    if reason == NO_AGENT_ALLOWS_EGRESS:
        return f"no agent allows egress among those that could run the job {considered}"
    if reason == NO_AGENT_WITH_ENOUGH_SCRATCH:
        scratch = _memory_text(job.scratch_bytes)
        return (
            f"no agent has {scratch} of free scratch among those that could run the job "
            f"{considered}"
        )
    runnable = screening.runnable_too_dear
    return (
        f"{runnable} agent{'' if runnable == 1 else 's'} could run the job, but "
        f"{'it asks' if runnable == 1 else 'all ask'} more than its max price of "
        f"{format_money(job.max_price_per_gpu_hour)} per GPU-hour {considered}"
    )


def run_auction(job: JobSpec, offers: Sequence[AgentOffer]) -> Outcome:
    """Run one sealed-bid round; the outcome does not depend on the order of `offers`.

    When nobody wins, `reason` names the last filter that removed the remaining
    candidates, taking the filters in the order enough free healthy GPUs, allowed
    model, enough memory, egress allowed, enough free scratch, max price: that is the
    constraint whose relaxation would bring the most promising agent into play. With no
    candidates at all (no offers, or every offer excluded) the reason is
    `no_agent_with_enough_gpus`.
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
        f"ask{'' if len(ranked) == 1 else 's'}; the price is {format_money(price)} per GPU-hour, "
        f"{basis}"
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
