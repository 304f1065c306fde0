"""Delays between retries, the one rule for every retry loop of the agent: each failure waits
twice as long as the one before, up to a cap, spread by jitter so that agents do not retry in
step; a success starts again from the first delay."""

from __future__ import annotations

import asyncio
import random

# The agent's exchanges with the coordinator back off, but never so far that a coordinator
# back from a restart would count the agent as silent (its heartbeat timeout is several
# intervals) or miss a cancel for long.
MAX_BACKOFF_S = 10.0


class Backoff:
    def __init__(
        self,
        first_s: float = 1.0,
        max_s: float = MAX_BACKOFF_S,
        *,
        factor: float = 2.0,
        jitter: bool = True,
    ) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self.factor = factor
        self.jitter = jitter
        self._next_s = first_s

    def reset(self) -> None:
        """After a success: the next failure waits the first delay again."""
        self._next_s = self.first_s

    def next_delay(self) -> float:
        """The delay before the next try, and the one after it grows."""
        delay = self._next_s
        self._next_s = min(self.max_s, self._next_s * self.factor)
        if self.jitter:
            delay *= 0.5 + random.random()  # noqa: S311 - spreading retries, not security
        return delay

    async def wait(self, at_most_s: float | None = None) -> None:
        """Sleep the next delay, or at_most_s if that is shorter."""
        delay = self.next_delay()
        await asyncio.sleep(delay if at_most_s is None else min(delay, at_most_s))
