"""The market offers an egress job only to agents that allow egress, and a scratch job only to
agents whose reported free scratch, less what their other leases hold, covers it; the ask
index decides such jobs as auctioning every offer would."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.market import Agent, Gpu, HostReport, Market
from shared.auction import (
    NO_AGENT_ALLOWS_EGRESS,
    NO_AGENT_WITH_ENOUGH_SCRATCH,
    JobSpec,
    run_auction,
)
from shared.identity import PrivateKey

GIB = 1 << 30
KEY = PrivateKey.from_seed(b"\x02" * 32).public
SCRATCH = [None, 0, 64 << 20, 100 * GIB, 250 * GIB]
NEEDS = [0, 64 << 20, 100 * GIB, 200 * GIB]

# (ask in yuan, free GPUs, egress allowed, reported scratch, scratch held by other leases)
agent_strategy = st.tuples(
    st.integers(1, 6),
    st.integers(1, 4),
    st.booleans(),
    st.sampled_from(SCRATCH),
    st.lists(st.sampled_from([64 << 20, 50 * GIB, 150 * GIB]), max_size=2),
)
# (GPU count, egress, scratch bytes, max price in yuan)
job_strategy = st.tuples(
    st.integers(1, 4), st.booleans(), st.sampled_from(NEEDS), st.integers(1, 8)
)


def _agent(n: int, ask: int, gpus: int, egress: bool, scratch: int | None) -> Agent:
    agent = Agent(
        agent_id=f"agent-{n:02d}",
        provider_id="p",
        provider_uscc="u",
        public_key=KEY,
        hostname="h",
        ask_per_gpu_hour=ask * 1_000_000,
        online=True,
        host=HostReport(8, 64 * GIB, None, None, scratch, egress),
    )
    for i in range(gpus):
        agent.gpus[f"GPU-{n}-{i}"] = Gpu(f"GPU-{n}-{i}", agent.agent_id, "A100", 80 * GIB, i)
    return agent


def _job(count: int, egress: bool, scratch: int, price: int) -> JobSpec:
    return JobSpec("job", count, 0, (), price * 1_000_000, (), egress, scratch)


@settings(max_examples=300, deadline=None)
@given(st.lists(agent_strategy, max_size=10), st.lists(job_strategy, min_size=1, max_size=4))
def test_candidates_place_egress_and_scratch_like_the_whole_market(
    agents: list[tuple[int, int, bool, int | None, list[int]]],
    jobs: list[tuple[int, bool, int, int]],
) -> None:
    market = Market(half_life_ms=86_400_000)
    for n, (ask, gpus, egress, scratch, held) in enumerate(agents):
        agent = _agent(n, ask, gpus + 1, egress, scratch)
        market.add_agent(agent)
        # other leases on the agent: one GPU and some scratch each
        for k, size in enumerate(held):
            market.assign(agent, (), f"lease-{n}-{k}", size)
    everyone = [market.offer_of(a, 0) for a in market.agents.values()]
    for count, egress, scratch, price in jobs:
        job = _job(count, egress, scratch, price)
        indexed = run_auction(job, market.candidates(job, 0))
        complete = run_auction(job, everyone)
        assert (indexed.winner, indexed.price_per_gpu_hour, indexed.reason) == (
            complete.winner,
            complete.price_per_gpu_hour,
            complete.reason,
        )
        if indexed.winner is not None:
            winner = market.agents[indexed.winner]
            assert winner.egress_allowed or not egress
            if scratch:
                reported = winner.host.scratch_free_bytes if winner.host else None
                assert (reported or 0) - sum(winner.scratch_held.values()) >= scratch


def test_an_egress_job_waits_for_an_agent_that_allows_it() -> None:
    market = Market(half_life_ms=86_400_000)
    market.add_agent(_agent(0, 1, 1, False, None))
    job = _job(1, True, 0, 5)
    outcome = run_auction(job, market.candidates(job, 0))
    assert outcome.reason == NO_AGENT_ALLOWS_EGRESS
    assert outcome.reason_detail.startswith("no agent allows egress")
    version = market.version
    agent = market.agents["agent-00"]
    agent.host = HostReport(8, 64 * GIB, None, None, None, True)
    market.refresh(agent)
    assert market.version != version  # pending egress jobs are auctioned again
    assert run_auction(job, market.candidates(job, 0)).winner == "agent-00"


def test_scratch_held_by_a_lease_is_not_offered_twice_until_it_ends() -> None:
    market = Market(half_life_ms=86_400_000)
    agent = _agent(0, 1, 2, False, 300 * GIB)
    market.add_agent(agent)
    job = _job(1, False, 200 * GIB, 5)
    assert run_auction(job, market.candidates(job, 0)).winner == "agent-00"
    market.assign(agent, ("GPU-0-0",), "lease-1", 200 * GIB)
    outcome = run_auction(job, market.candidates(job, 0))
    assert outcome.reason == NO_AGENT_WITH_ENOUGH_SCRATCH
    assert "no agent has 200 GiB of free scratch" in outcome.reason_detail
    version = market.version
    market.release("agent-00", ("GPU-0-0",), "lease-1")
    assert market.version != version
    assert run_auction(job, market.candidates(job, 0)).winner == "agent-00"


def test_an_agent_without_scratch_dir_never_gets_a_scratch_job() -> None:
    market = Market(half_life_ms=86_400_000)
    market.add_agent(_agent(0, 1, 1, True, None))
    outcome = run_auction(
        _job(1, False, 64 << 20, 5), market.candidates(_job(1, False, 64 << 20, 5), 0)
    )
    assert outcome.winner is None and outcome.reason == NO_AGENT_WITH_ENOUGH_SCRATCH
    assert "64 MiB of free scratch" in outcome.reason_detail
