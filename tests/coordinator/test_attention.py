"""The coordinator credits agents with the time it was deaf, the stalls' lengths and no more:
recurring stalls cannot keep a silent agent alive."""

from __future__ import annotations

from coordinator.attention import STALL_MS, Attention
from coordinator.scheduler import Counters


class Clocks:
    def __init__(self) -> None:
        self.wall_ms = 1_000_000
        self.mono_s = 0.0

    def advance(self, ms: int) -> None:
        self.wall_ms += ms
        self.mono_s += ms / 1000


def _watching(clocks: Clocks) -> Attention:
    attention = Attention(lambda: clocks.wall_ms, Counters(), monotonic=lambda: clocks.mono_s)
    attention._watching = True  # as `run` sets it, without an event loop
    return attention


def test_only_stalls_after_a_moment_count_and_only_for_their_length() -> None:
    clocks = Clocks()
    attention = _watching(clocks)
    seen = clocks.wall_ms
    for _ in range(10):  # ten stalls of 1.5 s, each after 5 s of listening
        for _ in range(50):
            clocks.advance(100)
            attention.tick()
        clocks.advance(1_500)
        attention.tick()
    assert attention.counters.loop_stalls == 10
    assert attention.deaf_since(seen) == 10 * 1_500
    assert attention.deaf_since(clocks.wall_ms) == 0
    # silence since the start of it all is 65 s, of which 15 s unheard: a 30 s timeout passed
    assert clocks.wall_ms - seen - attention.deaf_since(seen) > 30_000


def test_a_short_gap_is_no_stall_and_time_before_the_start_is_nobodys() -> None:
    clocks = Clocks()
    attention = _watching(clocks)
    clocks.advance(STALL_MS)
    attention.tick()
    assert attention.counters.loop_stalls == 0
    assert attention.deaf_since(attention.listening_since_ms - 5_000) == 5_000
