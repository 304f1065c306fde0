"""Properties of the sealed-bid reverse auction, checked against a plain reference rule:
prices between the winner's ask and the max price, order independence, replay through msgpack."""

from __future__ import annotations

from dataclasses import replace

import msgpack  # type: ignore[import-untyped]  # msgpack ships no type hints
from hypothesis import given
from hypothesis import strategies as st

from shared.auction import (
    REASONS,
    AgentOffer,
    GpuOffer,
    JobSpec,
    Outcome,
    replay,
    replay_round,
    round_record,
    run_auction,
)

GIB = 1 << 30

MODELS = ("A100", "H100", "L40S")
MEMORIES = (24 * GIB, 40 * GIB, 80 * GIB)
SCRATCH = (0, 64 << 20, 100 * GIB, 200 * GIB)
AGENT_IDS = ("0a", "1b", "2c", "3d", "4e", "5f", "6a")


@st.composite
def agent_offers(draw: st.DrawFn) -> list[AgentOffer]:
    ids = draw(st.lists(st.sampled_from(AGENT_IDS), unique=True, max_size=len(AGENT_IDS)))
    offers = []
    for agent_id in ids:
        count = draw(st.integers(0, 4))
        free = tuple(
            GpuOffer(
                f"GPU-{agent_id}-{i}",
                draw(st.sampled_from(MODELS)),
                draw(st.sampled_from(MEMORIES)),
                draw(st.booleans() | st.just(True)),
            )
            for i in range(count)
        )
        ask = draw(st.integers(0, 20)) * 10  # coarse, so asks tie often
        reliability = draw(st.sampled_from((0, 500_000, 900_000, 1_000_000)))
        egress = draw(st.booleans())
        scratch = draw(st.sampled_from(SCRATCH))
        offers.append(AgentOffer(agent_id, ask, reliability, free, egress, scratch))
    return offers


jobs = st.builds(
    JobSpec,
    job_id=st.just("job-1"),
    gpu_count=st.integers(1, 3),
    min_gpu_memory_bytes=st.sampled_from((0, *MEMORIES)),
    gpu_models=st.lists(st.sampled_from(MODELS), unique=True, max_size=2).map(tuple),
    max_price_per_gpu_hour=st.integers(0, 20).map(lambda n: n * 10 + 5),
    excluded_agents=st.lists(st.sampled_from(AGENT_IDS), unique=True, max_size=2).map(tuple),
    egress=st.booleans(),
    scratch_bytes=st.sampled_from(SCRATCH),
)


def _fits(spec: JobSpec, gpu: GpuOffer) -> bool:
    return (
        gpu.healthy
        and (not spec.gpu_models or gpu.model in spec.gpu_models)
        and gpu.memory_total_bytes >= spec.min_gpu_memory_bytes
    )


def reference_auction(spec: JobSpec, offers: list[AgentOffer]) -> Outcome:
    """The rules written as plainly as possible, to check the fast path against."""
    present = [o for o in offers if o.agent_id not in spec.excluded_agents]
    n = spec.gpu_count
    stages = []
    for o in present:
        healthy = [g for g in o.free_gpus if g.healthy]
        of_model = [g for g in healthy if not spec.gpu_models or g.model in spec.gpu_models]
        fitting = [g for g in of_model if g.memory_total_bytes >= spec.min_gpu_memory_bytes]
        cheap = o.ask_per_gpu_hour <= spec.max_price_per_gpu_hour
        passed = [
            len(healthy) >= n,
            len(of_model) >= n,
            len(fitting) >= n,
            o.egress_allowed or not spec.egress,
            o.scratch_free_bytes >= spec.scratch_bytes,
            cheap,
        ]
        stages.append(passed.index(False) if False in passed else len(passed))
    ranked = sorted(
        (o for o, stage in zip(present, stages, strict=True) if stage == len(REASONS)),
        key=lambda o: (o.ask_per_gpu_hour, -o.reliability_ppm, o.agent_id),
    )
    if not ranked:
        reason = REASONS[max(stages, default=0)]
        return Outcome(spec.job_id, None, (), None, (), reason, "")
    winner = ranked[0]
    if len(ranked) == 1:
        price = spec.max_price_per_gpu_hour
    else:
        price = min(ranked[1].ask_per_gpu_hour, spec.max_price_per_gpu_hour)
    picked = tuple(g.uuid for g in winner.free_gpus if _fits(spec, g))[:n]
    return Outcome(
        spec.job_id, winner.agent_id, picked, price, tuple(o.agent_id for o in ranked), None, ""
    )


@given(jobs, agent_offers())
def test_matches_the_plain_reference(spec: JobSpec, offers: list[AgentOffer]) -> None:
    assert replace(run_auction(spec, offers), reason_detail="") == reference_auction(spec, offers)


@given(jobs, agent_offers())
def test_price_lies_between_the_winners_ask_and_the_max_price(
    spec: JobSpec, offers: list[AgentOffer]
) -> None:
    outcome = run_auction(spec, offers)
    if outcome.winner is None:
        assert outcome.price_per_gpu_hour is None and outcome.reason in REASONS
        return
    by_id = {o.agent_id: o for o in offers}
    assert outcome.price_per_gpu_hour is not None
    assert by_id[outcome.winner].ask_per_gpu_hour <= outcome.price_per_gpu_hour
    assert outcome.price_per_gpu_hour <= spec.max_price_per_gpu_hour
    assert outcome.winner not in spec.excluded_agents


@given(jobs, agent_offers(), st.data())
def test_winner_cannot_move_its_price_by_lowering_its_ask(
    spec: JobSpec, offers: list[AgentOffer], data: st.DataObject
) -> None:
    outcome = run_auction(spec, offers)
    if outcome.winner is None:
        return
    index = next(i for i, o in enumerate(offers) if o.agent_id == outcome.winner)
    lower = data.draw(st.integers(0, offers[index].ask_per_gpu_hour))
    changed = list(offers)
    changed[index] = replace(offers[index], ask_per_gpu_hour=lower)
    again = run_auction(spec, changed)
    assert again.winner == outcome.winner
    assert again.price_per_gpu_hour == outcome.price_per_gpu_hour


@given(jobs, agent_offers(), st.data())
def test_offer_order_does_not_matter(
    spec: JobSpec, offers: list[AgentOffer], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(offers))
    assert run_auction(spec, shuffled) == run_auction(spec, offers)


@given(jobs, agent_offers())
def test_placement_never_breaks_egress_or_scratch(spec: JobSpec, offers: list[AgentOffer]) -> None:
    outcome = run_auction(spec, offers)
    by_id = {o.agent_id: o for o in offers}
    for agent_id in outcome.eligible:
        assert by_id[agent_id].egress_allowed or not spec.egress
        assert by_id[agent_id].scratch_free_bytes >= spec.scratch_bytes


@given(jobs, agent_offers())
def test_recorded_round_replays_through_msgpack(spec: JobSpec, offers: list[AgentOffer]) -> None:
    outcome = run_auction(spec, offers)
    record = msgpack.unpackb(msgpack.packb(round_record(spec, offers, outcome)))
    assert replay(record)
    assert replay_round(record) == outcome


@given(jobs, agent_offers())
def test_winner_gets_gpu_count_distinct_qualifying_gpus_of_its_own(
    spec: JobSpec, offers: list[AgentOffer]
) -> None:
    outcome = run_auction(spec, offers)
    if outcome.winner is None:
        assert outcome.gpu_uuids == () and outcome.eligible == ()
        return
    winner = next(o for o in offers if o.agent_id == outcome.winner)
    own = {g.uuid: g for g in winner.free_gpus}
    assert len(outcome.gpu_uuids) == spec.gpu_count
    assert len(set(outcome.gpu_uuids)) == spec.gpu_count
    assert all(uuid in own and _fits(spec, own[uuid]) for uuid in outcome.gpu_uuids)
    assert outcome.eligible[0] == outcome.winner
