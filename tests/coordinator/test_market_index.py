"""The market's ask index gives every auction the same outcome as auctioning all offers."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.market import Agent, Gpu, Market
from shared.auction import JobSpec, run_auction
from shared.identity import PrivateKey

MODELS = ["H100 SXM", "A100", "L40S"]
MEMORY = [40 << 30, 80 << 30]
KEY = PrivateKey.from_seed(b"\x01" * 32).public

gpu_strategy = st.tuples(
    st.sampled_from(MODELS),
    st.sampled_from(MEMORY),
    st.booleans(),
    st.sampled_from([None, None, None, "uuid_conflict"]),
    st.booleans(),
)
agent_strategy = st.tuples(
    st.integers(1, 6),
    st.lists(gpu_strategy, min_size=1, max_size=8),
    st.booleans(),
    st.integers(0, 400_000),
)
job_strategy = st.tuples(
    st.integers(1, 9),
    st.sampled_from([0, 40 << 30, 80 << 30, 120 << 30]),
    st.sets(st.sampled_from(MODELS), max_size=2),
    st.integers(1, 8),
    st.sets(st.integers(0, 11), max_size=3),
)
# (ask in yuan, GPUs as (model, memory, healthy, flag, leased), online, penalty)
AgentSpec = tuple[int, list[tuple[str, int, bool, str | None, bool]], bool, int]
# (GPU count, min memory, models, max price in yuan, excluded agent numbers)
JobShape = tuple[int, int, set[str], int, set[int]]


def _market(specs: list[AgentSpec]) -> Market:
    market = Market(half_life_ms=86_400_000)
    for n, (ask, gpus, online, penalty) in enumerate(specs):
        agent = Agent(
            agent_id=f"agent-{n:02d}",
            provider_id="p",
            provider_uscc="u",
            public_key=KEY,
            hostname="h",
            ask_per_gpu_hour=ask * 1_000_000,
            online=online,
            penalty_ppm=penalty,
            penalty_at_ms=0,
        )
        for i, (model, memory, healthy, flag, leased) in enumerate(gpus):
            agent.gpus[f"GPU-{n}-{i}"] = Gpu(
                f"GPU-{n}-{i}",
                agent.agent_id,
                model,
                memory,
                index=i,
                healthy=healthy,
                flag=flag,
                lease_id="lease-x" if leased else None,
            )
        market.add_agent(agent)
    return market


@settings(max_examples=300, deadline=None)
@given(st.lists(agent_strategy, max_size=12), st.lists(job_strategy, min_size=1, max_size=5))
def test_candidates_decide_like_the_whole_market(
    agents: list[AgentSpec], jobs: list[JobShape]
) -> None:
    market = _market(agents)
    everyone = [
        market.offer_of(a, 0)
        for a in market.agents.values()
        if a.online and a.ask_per_gpu_hour is not None and a.free_gpus()
    ]
    for number, (count, memory, models, price, excluded) in enumerate(jobs):
        job = JobSpec(
            job_id=f"job-{number}",
            gpu_count=count,
            min_gpu_memory_bytes=memory,
            gpu_models=tuple(sorted(models)),
            max_price_per_gpu_hour=price * 1_000_000,
            excluded_agents=tuple(sorted(f"agent-{i:02d}" for i in excluded)),
        )
        indexed = run_auction(job, market.candidates(job, 0))
        complete = run_auction(job, everyone)
        assert (indexed.winner, indexed.gpu_uuids, indexed.price_per_gpu_hour, indexed.reason) == (
            complete.winner,
            complete.gpu_uuids,
            complete.price_per_gpu_hour,
            complete.reason,
        )


def test_assigning_and_releasing_gpus_moves_agents_in_the_index() -> None:
    market = _market([(5, [("A100", 80 << 30, True, None, False)] * 2, True, 0)])
    agent = market.agents["agent-00"]
    job = JobSpec(
        job_id="j",
        gpu_count=2,
        min_gpu_memory_bytes=0,
        gpu_models=(),
        max_price_per_gpu_hour=10_000_000,
        excluded_agents=(),
    )
    assert run_auction(job, market.candidates(job, 0)).winner == "agent-00"
    market.assign(agent, ("GPU-0-0",), "lease-1")
    assert run_auction(job, market.candidates(job, 0)).reason == "no_agent_with_enough_gpus"
    market.release("agent-00", ("GPU-0-0",), "lease-1")
    assert run_auction(job, market.candidates(job, 0)).winner == "agent-00"


def test_every_offer_tied_at_the_deciding_asks_is_considered() -> None:
    gpu = ("A100", 80 << 30, True, None, False)
    market = _market(
        [
            (5, [gpu], True, 300_000),
            (5, [gpu], True, 200_000),
            (5, [gpu], True, 0),
            (7, [gpu], True, 0),
        ]
    )
    job = JobSpec(
        job_id="j",
        gpu_count=1,
        min_gpu_memory_bytes=0,
        gpu_models=(),
        max_price_per_gpu_hour=10_000_000,
        excluded_agents=(),
    )
    outcome = run_auction(job, market.candidates(job, 0))
    assert (outcome.winner, outcome.price_per_gpu_hour) == ("agent-02", 5_000_000)
