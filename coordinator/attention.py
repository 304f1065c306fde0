"""Whether the coordinator itself has been listening. An event loop that stalls (a paused
process, a starved host, a long synchronous step) hears no heartbeats and no reports, and
silence while the coordinator was not listening is not the agents': every deadline that
judges an agent by its silence is moved on by the time the coordinator was deaf since (the
stalls' lengths, no more, so recurring stalls cannot keep a silent agent alive)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from coordinator.scheduler import Counters

# a loop that went this long without a tick was not listening
STALL_MS = 1_000
TICK_S = 0.1
MAX_STALLS_KEPT = 1_000  # older stalls than the oldest kept count for nobody


class Attention:
    def __init__(
        self,
        clock: Callable[[], int],
        counters: Counters,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.counters = counters
        self._monotonic = monotonic
        self._ticked_at = monotonic()
        self._watching = False  # stalls are told only while `run` ticks (not in a bare test)
        # the coordinator starts listening when it starts (its own downtime is not theirs)
        self.listening_since_ms = clock()
        self._stalls: deque[tuple[int, int]] = deque(maxlen=MAX_STALLS_KEPT)  # (ended, ms)

    def tick(self) -> None:
        """Note that the loop runs; after a stall, listening starts again now."""
        now = self._monotonic()
        gap_ms = int((now - self._ticked_at) * 1000)
        if self._watching and gap_ms > STALL_MS:
            self._stalls.append((self.clock(), gap_ms))
            self.counters.loop_stalls += 1
        self._ticked_at = now

    def deaf_since(self, since_ms: int) -> int:
        """How long the coordinator was not listening after `since_ms` (its start counts as
        the moment it began to listen: no earlier silence is anyone's)."""
        deaf = max(0, self.listening_since_ms - since_ms)
        for ended_ms, length_ms in reversed(self._stalls):
            if ended_ms <= since_ms:
                break
            deaf += min(length_ms, ended_ms - since_ms)
        return deaf

    async def run(self) -> None:
        self._ticked_at, self._watching = self._monotonic(), True
        while True:
            self.tick()
            await asyncio.sleep(TICK_S)
