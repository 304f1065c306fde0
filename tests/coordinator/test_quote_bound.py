"""What a rogue enterprise can learn of the asks by quoting: the quote's price is a function of
the job's max price and the second ask rounded up to two significant figures, so no sweep of
max prices tells two asks apart that round alike (see coordinator.jobs.quote)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from coordinator.jobs.quote import quoted_price, rounded_up
from shared.auction import AgentOffer, GpuOffer, JobSpec, eligible_offers, run_auction
from shared.auction.values import INT_MAX


def _offer(agent_id: str, ask: int) -> AgentOffer:
    gpu = GpuOffer(f"GPU-{agent_id}", "H100 SXM", 80 << 30, True)
    return AgentOffer(agent_id, ask, 1_000_000, (gpu,))


def _answer(asks: list[int], max_price: int) -> tuple[bool, int | None, bool]:
    """What a quote tells of an auction over agents with these asks."""
    job = JobSpec("quote-1", 1, 0, (), max_price)
    offers = [_offer(f"a{i}", ask) for i, ask in enumerate(asks)]
    outcome = run_auction(job, offers)
    if outcome.winner is None:
        return False, None, False
    fitting = eligible_offers(JobSpec("quote-1", 1, 0, (), INT_MAX), offers)
    price, exact = quoted_price(fitting[1].ask_per_gpu_hour, max_price)
    assert outcome.price_per_gpu_hour is not None
    assert outcome.price_per_gpu_hour <= price  # a ceiling, never below what is paid
    assert not exact or outcome.price_per_gpu_hour == price
    return True, price, exact


@given(st.integers(1, 10**12))
def test_rounding_up_keeps_two_figures_and_never_goes_down(micro: int) -> None:
    up = rounded_up(micro)
    assert up >= micro
    assert len(str(up).rstrip("0")) <= 2 or up == micro
    assert rounded_up(up) == up


def test_rounding_up_examples() -> None:
    assert [rounded_up(n) for n in (1, 99, 101, 4_123_456, 12_340_000, 13_000_000)] == [
        1,
        99,
        110,
        4_200_000,
        13_000_000,
        13_000_000,
    ]


@given(
    cheapest=st.integers(1, 10**9),
    second=st.integers(1, 10**9),
    other=st.integers(1, 10**9),
    max_price=st.integers(1, 2 * 10**9),
)
def test_asks_that_round_alike_get_the_same_answer_at_every_max_price(
    cheapest: int, second: int, other: int, max_price: int
) -> None:
    if rounded_up(second) != rounded_up(other):
        other = second + (rounded_up(second) - second) // 2  # another ask in the same cell
    low = min(cheapest, second, other)
    assert _answer([low, second], max_price) == _answer([low, other], max_price)


def test_a_sweep_of_max_prices_finds_the_rounded_ask_only() -> None:
    sweep = range(3_000_000, 6_000_000, 1_000)
    answers = [_answer([3_000_000, 4_123_456], p) for p in sweep]
    assert answers == [_answer([3_000_000, 4_199_999], p) for p in sweep]
    assert answers == [_answer([3_000_000, 4_100_001], p) for p in sweep]
    assert answers != [_answer([3_000_000, 4_100_000], p) for p in sweep]  # the next cell
    told = {(price, exact) for _, price, exact in answers}
    assert {price for price, exact in told if not exact and price != 4_200_000} == set(
        range(4_101_000, 4_200_000, 1_000)
    )  # "at most" the max price, where it is below ¥4.20, the ask never named
