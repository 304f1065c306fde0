"""A round's record as the log keeps it, and its replay.

Wire format (msgpack-ready: positional arrays of ints, strs, bools and None, no maps,
no floats; a decoder accepts lists or tuples and returns the dataclasses):

    job     = [job_id, gpu_count, min_gpu_memory_bytes, [gpu_model, ...],
               max_price_per_gpu_hour, [excluded_agent_id, ...], egress, scratch_bytes]
    gpu     = [uuid, model, memory_total_bytes, healthy]
    offer   = [agent_id, ask_per_gpu_hour, reliability_ppm, [gpu, ...],
               egress_allowed, scratch_free_bytes]
    outcome = [job_id, winner_agent_id | None, [gpu_uuid, ...],
               price_per_gpu_hour | None, [eligible_agent_id, ...] (rank order),
               reason | None, reason_detail]
    round   = [ROUND_VERSION, job, [offer, ...] (sorted by agent_id), outcome]

`replay` compares everything that decides the round (job id, winner, GPUs, price,
ranking, reason code) but not `reason_detail`, whose wording may improve without
making old rounds fail.

Version 1 rounds, recorded before jobs could ask for egress or scratch, have jobs without
the last two items and offers without the last two; they replay as jobs that asked for
neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shared.auction.rule import run_auction
from shared.auction.values import (
    REASONS,
    AgentOffer,
    AuctionError,
    GpuOffer,
    JobSpec,
    Outcome,
    need_int,
    need_str,
)

ROUND_VERSION = 2
_VERSIONS = (1, 2)


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
        job.egress,
        job.scratch_bytes,
    ]


def job_from_wire(value: object, version: int = ROUND_VERSION) -> JobSpec:
    items = _need_array(value, 6 if version == 1 else 8, "a job")
    job_id, gpu_count, min_memory, models, max_price, excluded = items[:6]
    egress, scratch = (False, 0) if version == 1 else items[6:]
    return JobSpec(
        job_id,
        gpu_count,
        min_memory,
        tuple(_need_list(models, "a job's gpu_models")),
        max_price,
        tuple(_need_list(excluded, "a job's excluded_agents")),
        egress,
        scratch,
    )


def offers_to_wire(offers: Sequence[AgentOffer]) -> list[Any]:
    """Offers as arrays, in the caller's order (`round_record` sorts them by agent_id)."""
    return [
        [
            offer.agent_id,
            offer.ask_per_gpu_hour,
            offer.reliability_ppm,
            [[g.uuid, g.model, g.memory_total_bytes, g.healthy] for g in offer.free_gpus],
            offer.egress_allowed,
            offer.scratch_free_bytes,
        ]
        for offer in offers
    ]


def offers_from_wire(value: object, version: int = ROUND_VERSION) -> tuple[AgentOffer, ...]:
    offers = []
    for item in _need_list(value, "a round's offers"):
        items = _need_array(item, 4 if version == 1 else 6, "an offer")
        agent_id, ask, reliability, gpus = items[:4]
        egress_allowed, scratch_free = (False, 0) if version == 1 else items[4:]
        free_gpus = tuple(
            GpuOffer(*_need_array(gpu, 4, "an offer's GPU"))
            for gpu in _need_list(gpus, "an offer's free GPUs")
        )
        offers.append(
            AgentOffer(agent_id, ask, reliability, free_gpus, egress_allowed, scratch_free)
        )
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
    need_str(job_id, "an outcome's job_id")
    gpu_uuids = tuple(_need_list(uuids, "an outcome's gpu_uuids"))
    ranked = tuple(_need_list(eligible, "an outcome's eligible agents"))
    for item in gpu_uuids + ranked:
        need_str(item, "each GPU uuid and agent id of an outcome")
    if type(detail) is not str:
        raise AuctionError(f"an outcome's reason_detail must be a string, not {detail!r}")
    if winner is None:
        if price is not None or gpu_uuids or ranked or reason not in REASONS:
            raise AuctionError(
                "an outcome without a winner must have no price, GPUs or eligible agents "
                f"and one of the reasons {', '.join(REASONS)}"
            )
    else:
        need_str(winner, "an outcome's winner")
        need_int(price, "an outcome's price_per_gpu_hour")
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
    if type(version) is not int or version not in _VERSIONS:
        shown = " and ".join(str(v) for v in _VERSIONS)
        raise AuctionError(f"this code replays auction rounds of versions {shown}, not {version!r}")
    return (
        job_from_wire(job, version),
        offers_from_wire(offers, version),
        outcome_from_wire(outcome),
    )


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
