"""Whether the coordinator itself has been listening. An event loop that stalls (a paused
process, a starved host, a long synchronous step) hears no heartbeats and no reports, and
silence while the coordinator was not listening is not the agents': every deadline that
judges an agent by its silence counts only the time since the coordinator listened again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from coordinator.scheduler import Counters

# a loop that went this long without a tick was not listening
STALL_MS = 1_000
TICK_S = 0.1


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

    def tick(self) -> None:
        """Note that the loop runs; after a stall, listening starts again now."""
        now = self._monotonic()
        if self._watching and (now - self._ticked_at) * 1000 > STALL_MS:
            self.listening_since_ms = self.clock()
            self.counters.loop_stalls += 1
        self._ticked_at = now

    def heard_since(self, seen_ms: int | None) -> int:
        """When an agent last seen at `seen_ms` was last heard, counting the coordinator's
        deafness in its favour."""
        return max(seen_ms or 0, self.listening_since_ms)

    async def run(self) -> None:
        self._ticked_at, self._watching = self._monotonic(), True
        while True:
            self.tick()
            await asyncio.sleep(TICK_S)
