"""The one retry rule of the agent: delays double up to a cap, jitter spreads them, a success
starts again from the first delay."""

from __future__ import annotations

import asyncio

import pytest

from agent.backoff import MAX_BACKOFF_S, Backoff


def test_delays_double_up_to_the_cap_and_start_again_after_a_success() -> None:
    backoff = Backoff(0.5, 3.0, jitter=False)
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_jitter_spreads_each_delay_from_half_to_one_and_a_half_times() -> None:
    backoff = Backoff()
    for expected in (1.0, 2.0, 4.0, 8.0, MAX_BACKOFF_S, MAX_BACKOFF_S):
        assert 0.5 * expected <= backoff.next_delay() <= 1.5 * expected


async def test_a_wait_never_sleeps_longer_than_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    backoff = Backoff(4.0, 8.0, jitter=False)
    await backoff.wait(at_most_s=1.0)
    await backoff.wait()
    assert slept == [1.0, 8.0]
