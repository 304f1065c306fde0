"""The auction's egress and scratch filters: their reasons, and old rounds recorded before jobs
could ask for either still replay."""

from __future__ import annotations

import msgpack  # type: ignore[import-untyped]  # msgpack ships no type hints

from shared.auction import (
    NO_AGENT_ALLOWS_EGRESS,
    NO_AGENT_AT_OR_BELOW_MAX_PRICE,
    NO_AGENT_WITH_ENOUGH_GPUS,
    NO_AGENT_WITH_ENOUGH_SCRATCH,
    AgentOffer,
    GpuOffer,
    JobSpec,
    replay,
    replay_round,
    round_from_record,
    round_record,
    run_auction,
)

GIB = 1 << 30


def _offer(agent_id: str, ask: int, egress: bool = False, scratch: int = 0) -> AgentOffer:
    gpu = GpuOffer(f"GPU-{agent_id}", "H100", 80 * GIB, True)
    return AgentOffer(agent_id, ask, 900_000, (gpu,), egress, scratch)


def _job(egress: bool = False, scratch: int = 0, max_price: int = 1000) -> JobSpec:
    return JobSpec("job-1", 1, 0, (), max_price, (), egress, scratch)


def test_the_reason_is_the_furthest_filter_reached() -> None:
    assert run_auction(_job(egress=True), [_offer("a", 10)]).reason == NO_AGENT_ALLOWS_EGRESS
    outcome = run_auction(_job(scratch=200 * GIB), [_offer("a", 10, scratch=100 * GIB)])
    assert outcome.reason == NO_AGENT_WITH_ENOUGH_SCRATCH
    assert outcome.reason_detail.startswith("no agent has 200 GiB of free scratch")
    # egress allowed and scratch enough, but too dear: the price is what is left
    dear = run_auction(_job(True, GIB, max_price=5), [_offer("a", 10, egress=True, scratch=GIB)])
    assert dear.reason == NO_AGENT_AT_OR_BELOW_MAX_PRICE
    # hardware comes first: no GPUs is no GPUs, whatever the agent allows
    assert run_auction(_job(egress=True), []).reason == NO_AGENT_WITH_ENOUGH_GPUS


def test_the_cheapest_agent_that_allows_egress_wins() -> None:
    offers = [_offer("a", 10), _offer("b", 30, egress=True), _offer("c", 20, egress=True)]
    outcome = run_auction(_job(egress=True), offers)
    assert (outcome.winner, outcome.price_per_gpu_hour, outcome.eligible) == ("c", 30, ("c", "b"))
    assert run_auction(_job(), offers).winner == "a"


def test_a_round_records_what_the_rule_used_and_replays() -> None:
    spec = _job(True, 64 << 20)
    offers = [_offer("a", 10, True, 1 << 30), _offer("b", 5, False, 1 << 40)]
    record = msgpack.unpackb(msgpack.packb(round_record(spec, offers, run_auction(spec, offers))))
    job, replayed_offers, outcome = round_from_record(record)
    assert (job.egress, job.scratch_bytes) == (True, 64 << 20)
    assert {(o.agent_id, o.egress_allowed, o.scratch_free_bytes) for o in replayed_offers} == {
        ("a", True, 1 << 30),
        ("b", False, 1 << 40),
    }
    assert outcome.winner == "a" and replay(record)
    # an operator who edits the recorded egress flag of b makes the round fail its replay
    record[2][1][4] = True
    assert not replay(record)


def test_a_version_1_round_replays_as_a_job_that_asked_neither() -> None:
    """What a coordinator wrote before this change: jobs of 6 items, offers of 4."""
    gpu = ["GPU-a", "H100", 80 * GIB, True]
    record = [
        1,
        ["job-1", 1, 0, [], 1000, []],
        [["a", 10, 900_000, [gpu]], ["b", 20, 900_000, [["GPU-b", "H100", 80 * GIB, True]]]],
        ["job-1", "a", ["GPU-a"], 20, ["a", "b"], None, "a won"],
    ]
    assert replay(record)
    assert replay_round(record).winner == "a"
    job, _, _ = round_from_record(record)
    assert (job.egress, job.scratch_bytes) == (False, 0)
