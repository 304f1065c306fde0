"""The sealed-bid reverse auction: rules, reasons, validation, the recorded round and replay
(its properties are in test_auction_properties.py)."""

from __future__ import annotations

from typing import Any

import msgpack  # type: ignore[import-untyped]  # msgpack ships no type hints
import pytest

from shared.auction import (
    NO_AGENT_AT_OR_BELOW_MAX_PRICE,
    NO_AGENT_WITH_ENOUGH_GPU_MEMORY,
    NO_AGENT_WITH_ENOUGH_GPUS,
    NO_AGENT_WITH_THAT_MODEL,
    REASONS,
    ROUND_VERSION,
    AgentOffer,
    AuctionError,
    GpuOffer,
    JobSpec,
    Outcome,
    eligible_offers,
    job_from_wire,
    job_to_wire,
    offers_from_wire,
    offers_to_wire,
    outcome_from_wire,
    outcome_to_wire,
    replay,
    replay_round,
    round_from_record,
    round_record,
    run_auction,
)
from shared.errors import SuanliError

GIB = 1 << 30


def gpus(
    agent_id: str, count: int, model: str = "A100", gib: int = 80, unhealthy: tuple[int, ...] = ()
) -> tuple[GpuOffer, ...]:
    return tuple(
        GpuOffer(f"GPU-{agent_id}-{i}", model, gib * GIB, i not in unhealthy) for i in range(count)
    )


def agent(
    agent_id: str,
    ask: int,
    count: int = 2,
    *,
    reliability: int = 900_000,
    model: str = "A100",
    gib: int = 80,
    unhealthy: tuple[int, ...] = (),
    free_gpus: tuple[GpuOffer, ...] | None = None,
) -> AgentOffer:
    if free_gpus is None:
        free_gpus = gpus(agent_id, count, model, gib, unhealthy)
    return AgentOffer(agent_id, ask, reliability, free_gpus)


def job(
    gpu_count: int = 1,
    *,
    min_gib: int = 0,
    models: tuple[str, ...] = (),
    max_price: int = 1_000,
    excluded: tuple[str, ...] = (),
) -> JobSpec:
    return JobSpec("job-1", gpu_count, min_gib * GIB, models, max_price, excluded)


# id, job, offers, winner, price, eligible (rank order), reason
# fmt: off
CASES = [
    pytest.param(
        job(), [agent("a", 300), agent("b", 200), agent("c", 400)],
        "b", 300, ("b", "a", "c"), None, id="lowest-ask-wins-second-lowest-sets-price",
    ),
    pytest.param(
        job(max_price=500), [agent("a", 100), agent("b", 2_000)],
        "a", 500, ("a",), None, id="ask-above-max-neither-eligible-nor-price-setting",
    ),
    pytest.param(
        job(max_price=500), [agent("a", 100), agent("b", 500)],
        "a", 500, ("a", "b"), None, id="ask-equal-to-max-is-eligible",
    ),
    pytest.param(
        job(max_price=700), [agent("a", 100)],
        "a", 700, ("a",), None, id="single-eligible-pays-max-price",
    ),
    pytest.param(
        job(), [agent("a", 0), agent("b", 0)],
        "a", 0, ("a", "b"), None, id="zero-asks",
    ),
    pytest.param(
        job(), [agent("a", 100, reliability=500_000), agent("b", 100, reliability=900_000)],
        "b", 100, ("b", "a"), None, id="tie-broken-by-higher-reliability",
    ),
    pytest.param(
        job(), [agent("b", 100), agent("a", 100), agent("c", 150)],
        "a", 100, ("a", "b", "c"), None, id="tie-broken-by-lower-agent-id",
    ),
    pytest.param(
        job(models=("H100", "H800")),
        [agent("a", 100, model="A100"), agent("b", 300, model="H800"),
         agent("c", 200, model="H100")],
        "c", 300, ("c", "b"), None, id="model-filter",
    ),
    pytest.param(
        job(min_gib=80),
        [agent("a", 100, gib=40), agent("b", 300, gib=80), agent("c", 200, gib=96)],
        "c", 300, ("c", "b"), None, id="memory-filter",
    ),
    pytest.param(
        job(4), [agent("a", 100, 2), agent("b", 300, 4), agent("c", 200, 8)],
        "c", 300, ("c", "b"), None, id="not-enough-free-gpus",
    ),
    pytest.param(
        job(2), [agent("a", 100, 2, unhealthy=(1,)), agent("b", 300, 2)],
        "b", 1_000, ("b",), None, id="unhealthy-gpu-does-not-count",
    ),
    pytest.param(
        job(excluded=("a",)), [agent("a", 100), agent("b", 300), agent("c", 400)],
        "b", 400, ("b", "c"), None, id="excluded-agent-neither-wins-nor-sets-price",
    ),
    pytest.param(
        job(), [], None, None, (), NO_AGENT_WITH_ENOUGH_GPUS, id="no-offers",
    ),
    pytest.param(
        job(excluded=("a", "b")), [agent("a", 100), agent("b", 100)],
        None, None, (), NO_AGENT_WITH_ENOUGH_GPUS, id="every-offer-excluded",
    ),
    pytest.param(
        job(4), [agent("a", 100, 2), agent("b", 100, 4, unhealthy=(0,))],
        None, None, (), NO_AGENT_WITH_ENOUGH_GPUS, id="reason-enough-gpus",
    ),
    pytest.param(
        job(2, models=("H100",)), [agent("a", 100, 2, model="A100"), agent("b", 100, 1)],
        None, None, (), NO_AGENT_WITH_THAT_MODEL, id="reason-model",
    ),
    pytest.param(
        job(2, min_gib=80, models=("H100",)),
        [agent("a", 100, 2, model="H100", gib=40), agent("b", 100, 2, model="A100")],
        None, None, (), NO_AGENT_WITH_ENOUGH_GPU_MEMORY, id="reason-memory",
    ),
    pytest.param(
        job(max_price=50), [agent("a", 100), agent("b", 60)],
        None, None, (), NO_AGENT_AT_OR_BELOW_MAX_PRICE, id="reason-price",
    ),
    pytest.param(
        job(2, models=("H100",), max_price=50),
        [agent("a", 100, 2, model="H100"), agent("b", 10, 2, model="A100")],
        None, None, (), NO_AGENT_AT_OR_BELOW_MAX_PRICE,
        id="reason-is-the-furthest-filter-reached-price",
    ),
    pytest.param(
        job(2, models=("H100",), max_price=50),
        [agent("a", 100, 2, model="A100"), agent("b", 10, 1, model="H100")],
        None, None, (), NO_AGENT_WITH_THAT_MODEL,
        id="reason-is-the-furthest-filter-reached-model-behind-price",
    ),
    pytest.param(
        job(2, excluded=("a",), max_price=50),
        [agent("a", 10, 2), agent("b", 100, 2), agent("c", 10, 1)],
        None, None, (), NO_AGENT_AT_OR_BELOW_MAX_PRICE, id="reason-ignores-excluded-agents",
    ),
]
# fmt: on


@pytest.mark.parametrize(("spec", "offers", "winner", "price", "eligible", "reason"), CASES)
def test_auction_table(
    spec: JobSpec,
    offers: list[AgentOffer],
    winner: str | None,
    price: int | None,
    eligible: tuple[str, ...],
    reason: str | None,
) -> None:
    outcome = run_auction(spec, offers)
    assert outcome.job_id == spec.job_id
    assert outcome.winner == winner
    assert outcome.price_per_gpu_hour == price
    assert outcome.eligible == eligible
    assert outcome.reason == reason
    assert outcome.reason_detail
    assert tuple(o.agent_id for o in eligible_offers(spec, offers)) == eligible
    if winner is None:
        assert outcome.gpu_uuids == ()
    else:
        assert len(outcome.gpu_uuids) == spec.gpu_count
    assert replay(round_record(spec, offers, outcome))


def test_winner_gets_the_first_qualifying_gpus_in_listed_order() -> None:
    free = (
        GpuOffer("GPU-z", "A100", 80 * GIB, True),  # wrong model
        GpuOffer("GPU-y", "H100", 80 * GIB, False),  # unhealthy
        GpuOffer("GPU-x", "H100", 40 * GIB, True),  # too little memory
        GpuOffer("GPU-w", "H100", 80 * GIB, True),
        GpuOffer("GPU-b", "H100", 94 * GIB, True),
        GpuOffer("GPU-a", "H100", 80 * GIB, True),
    )
    outcome = run_auction(job(2, min_gib=80, models=("H100",)), [agent("a", 1, free_gpus=free)])
    assert outcome.gpu_uuids == ("GPU-w", "GPU-b")


def test_no_winner_details_are_sentences() -> None:
    price = run_auction(job(max_price=50), [agent("a", 100), agent("b", 60)])
    assert "max price of ¥0.00005 per GPU-hour" in price.reason_detail
    assert "100" not in price.reason_detail  # sealed asks are not revealed
    memory = run_auction(job(2, min_gib=80), [agent("a", 1, 2, gib=40)])
    assert "at least 80 GiB each" in memory.reason_detail
    model = run_auction(job(models=("H100", "H800")), [agent("a", 1)])
    assert "of model H100, H800" in model.reason_detail
    count = run_auction(job(3), [agent("a", 1, 2)])
    assert "3 free healthy GPUs" in count.reason_detail
    nobody = run_auction(job(), [])
    assert "no agent" in nobody.reason_detail


def test_winner_detail_names_winner_and_price_basis() -> None:
    two = run_auction(job(), [agent("a", 100), agent("b", 200)])
    assert "agent a" in two.reason_detail and "second-lowest" in two.reason_detail
    one = run_auction(job(max_price=700), [agent("a", 100)])
    assert "¥0.0007 per GPU-hour" in one.reason_detail and "only eligible" in one.reason_detail


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: JobSpec("j", 0, 0, (), 1, ()), "gpu_count"),
        (lambda: JobSpec("j", -1, 0, (), 1, ()), "gpu_count"),
        (lambda: JobSpec("j", True, 0, (), 1, ()), "gpu_count"),
        (lambda: JobSpec("", 1, 0, (), 1, ()), "job_id"),
        (lambda: JobSpec("j", 1, -1, (), 1, ()), "min_gpu_memory_bytes"),
        (lambda: JobSpec("j", 1, 0, ["A100"], 1, ()), "gpu_models"),  # type: ignore[arg-type]  # wrong on purpose
        (lambda: JobSpec("j", 1, 0, ("",), 1, ()), "gpu_models"),
        (lambda: JobSpec("j", 1, 0, (), -1, ()), "max_price_per_gpu_hour"),
        (lambda: JobSpec("j", 1, 0, (), 1.5, ()), "max_price_per_gpu_hour"),  # type: ignore[arg-type]  # wrong on purpose
        (lambda: JobSpec("j", 1, 0, (), 2**63, ()), "max_price_per_gpu_hour"),
        (lambda: JobSpec("j", 1, 0, (), 1, ("a", 7)), "excluded_agents"),  # type: ignore[arg-type]  # wrong on purpose
        (lambda: GpuOffer("", "A100", 1, True), "uuid"),
        (lambda: GpuOffer("u", "A100", -1, True), "memory_total_bytes"),
        (lambda: GpuOffer("u", "A100", 1, 1), "healthy"),  # type: ignore[arg-type]  # wrong on purpose
        (lambda: AgentOffer("a", -1, 0, ()), "ask of agent a"),
        (lambda: AgentOffer("a", 1, -1, ()), "reliability of agent a"),
        (lambda: AgentOffer("a", 1, 1_000_001, ()), "reliability of agent a"),
        (lambda: AgentOffer("a", 1, 0, [GpuOffer("u", "A100", 1, True)]), "free_gpus"),  # type: ignore[arg-type]  # wrong on purpose
        (lambda: AgentOffer("a", 1, 0, (("u", "A100", 1, True),)), "free_gpus"),  # type: ignore[arg-type]  # wrong on purpose
        (
            lambda: AgentOffer("a", 1, 0, (GpuOffer("u", "A", 1, True),) * 2),
            "same GPU uuid more than once",
        ),
    ],
)
def test_bad_inputs_are_refused_with_a_sentence(make: Any, expected: str) -> None:
    with pytest.raises(AuctionError) as info:
        make()
    assert expected in info.value.detail
    assert isinstance(info.value, SuanliError)
    assert info.value.code == "bad_auction"


def test_reliability_bounds_are_inclusive() -> None:
    AgentOffer("a", 0, 0, ())
    AgentOffer("a", 0, 1_000_000, ())


def test_duplicate_agent_ids_are_refused() -> None:
    with pytest.raises(AuctionError, match="more than one offer"):
        run_auction(job(), [agent("a", 100), agent("b", 100), agent("a", 200)])


def test_duplicate_agent_is_refused_even_when_excluded() -> None:
    with pytest.raises(AuctionError, match="more than one offer"):
        run_auction(job(excluded=("a",)), [agent("a", 100), agent("a", 200)])


def test_wrong_types_are_refused() -> None:
    with pytest.raises(AuctionError, match="JobSpec"):
        run_auction(job_to_wire(job()), [])  # type: ignore[arg-type]  # wrong on purpose
    with pytest.raises(AuctionError, match="AgentOffer"):
        run_auction(job(), [["a", 1, 0, []]])  # type: ignore[list-item]  # wrong on purpose


# --- recorded rounds ------------------------------------------------------------------------


def _only_plain_values(value: object) -> bool:
    if isinstance(value, list):
        return all(_only_plain_values(item) for item in value)
    return value is None or type(value) in (int, str, bool)


def test_round_record_is_plain_and_survives_msgpack() -> None:
    spec = job(2, min_gib=40, models=("A100",), excluded=("c",))
    offers = [agent("b", 100, 3, unhealthy=(0,)), agent("a", 200), agent("c", 1)]
    outcome = run_auction(spec, offers)
    record = round_record(spec, offers, outcome)
    assert record[0] == ROUND_VERSION
    assert _only_plain_values(record)
    assert [offer[0] for offer in record[2]] == ["a", "b", "c"]  # sorted by agent_id
    decoded = msgpack.unpackb(msgpack.packb(record), strict_map_key=True)
    assert decoded == record
    assert replay(decoded)
    assert replay_round(decoded) == outcome
    assert round_from_record(decoded) == (
        spec,
        tuple(sorted(offers, key=lambda o: o.agent_id)),
        outcome,
    )


def test_round_record_does_not_depend_on_offer_order() -> None:
    spec = job()
    offers = [agent("b", 100), agent("a", 200), agent("c", 300)]
    outcome = run_auction(spec, offers)
    assert round_record(spec, offers, outcome) == round_record(spec, offers[::-1], outcome)


def test_wire_round_trips() -> None:
    spec = job(2, min_gib=1, models=("A100", "H100"), excluded=("x", "y"))
    offers = (agent("a", 5, 3, unhealthy=(1,)), agent("b", 6, 0))
    assert job_from_wire(job_to_wire(spec)) == spec
    assert offers_from_wire(offers_to_wire(offers)) == offers
    for outcome in (run_auction(spec, offers), run_auction(spec, ())):
        assert outcome_from_wire(outcome_to_wire(outcome)) == outcome
    # Decoders also take the tuples msgpack gives with use_list=False.
    assert job_from_wire(tuple(job_to_wire(spec))) == spec


def test_tampered_round_does_not_replay() -> None:
    spec = job()
    offers = [agent("a", 100), agent("b", 200), agent("c", 300)]
    record = round_record(spec, offers, run_auction(spec, offers))
    assert replay(record)

    higher_price = [*record[:3], [*record[3][:3], 300, *record[3][4:]]]
    assert not replay(higher_price)

    other_winner = round_record(
        spec,
        offers,
        Outcome("job-1", "b", ("GPU-b-0",), 300, ("b", "a", "c"), None, "b won"),
    )
    assert not replay(other_winner)

    other_asks = [
        record[0],
        record[1],
        [
            ["a", 100, 900_000, record[2][0][3], False, 0],
            ["b", 250, 900_000, record[2][1][3], False, 0],
            record[2][2],
        ],
        record[3],
    ]
    assert not replay(other_asks)  # the recorded price no longer follows from the asks


def test_reworded_detail_still_replays() -> None:
    spec = job()
    offers = [agent("a", 100)]
    record = round_record(spec, offers, run_auction(spec, offers))
    record[3][6] = "some older wording"
    assert replay(record)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r[:3], "array of 4"),
        (lambda r: [3, *r[1:]], "versions 1 and 2"),
        (lambda r: [True, *r[1:]], "versions 1 and 2"),
        (lambda r: [r[0], r[1][:5], *r[2:]], "a job must be an array of 8"),
        (lambda r: [1, *r[1:]], "a job must be an array of 6"),
        (lambda r: [r[0], [*r[1][:6], 1, 0], *r[2:]], "egress flag"),
        (lambda r: [r[0], r[1], [[*r[2][0][:5], -1]], r[3]], "free scratch of agent a"),
        (lambda r: [r[0], {"job_id": "j"}, *r[2:]], "a job must be"),
        (lambda r: [r[0], r[1], "offers", r[3]], "offers must be an array"),
        (lambda r: [r[0], r[1], [["a", 1, 0]], r[3]], "an offer must be"),
        (
            lambda r: [r[0], r[1], [["a", 1, 0, [["u", "A100", 1]], False, 0]], r[3]],
            "GPU must be",
        ),
        (lambda r: [r[0], r[1], [["a", 1.0, 0, [], False, 0]], r[3]], "ask of agent a"),
        (lambda r: [*r[:3], r[3][:6]], "an outcome must be"),
        (
            lambda r: [*r[:3], ["job-1", None, [], 5, [], "no_agent_with_enough_gpus", ""]],
            "without a winner",
        ),
        (lambda r: [*r[:3], ["job-1", None, [], None, [], "made_up", ""]], "without a winner"),
        (lambda r: [*r[:3], ["job-1", "a", ["u"], 5, ["b", "a"], None, ""]], "with a winner"),
        (lambda r: [*r[:3], ["job-1", "a", ["u"], None, ["a"], None, ""]], "price_per_gpu_hour"),
        (lambda r: [*r[:3], ["job-1", "a", [1], 5, ["a"], None, ""]], "GPU uuid"),
    ],
)
def test_malformed_records_are_refused(mutate: Any, expected: str) -> None:
    spec = job()
    offers = [agent("a", 100)]
    record = round_record(spec, offers, run_auction(spec, offers))
    with pytest.raises(AuctionError) as info:
        replay(mutate(record))
    assert expected in info.value.detail
