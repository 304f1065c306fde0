"""Per-principal request rates: one token bucket per agent and per API token.

A bucket holds up to `burst` requests and refills at `rate_per_s`; a request that finds it
empty is refused with 429 and the seconds until one request's worth is back. A full bucket
is the same as no bucket, so the table forgets those first and never grows past its bound.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from coordinator.errors import TooManyRequests

MAX_BUCKETS = 200_000


class RateLimiter:
    def __init__(
        self, rate_per_s: float, burst: int, what: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = float(rate_per_s)
        self.burst = float(burst)
        self.what = what
        self.clock = clock
        # principal -> (tokens left, when they were counted)
        self._buckets: dict[str, tuple[float, float]] = {}
        self.refused = 0

    def take(self, principal: str, cost: float = 1.0) -> None:
        """Spend `cost` from the principal's bucket, or raise TooManyRequests."""
        if self.rate <= 0:
            return
        now = self.clock()
        tokens, at = self._buckets.get(principal, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < cost:
            self.refused += 1
            self._buckets[principal] = (tokens, now)
            wait = max(1, math.ceil((cost - tokens) / self.rate))
            raise TooManyRequests(
                f"{self.what} sent more than {self.rate:g} requests a second (bursts of "
                f"{self.burst:g}); retry after {wait} s",
                wait,
            )
        self._buckets[principal] = (tokens - cost, now)
        if len(self._buckets) > MAX_BUCKETS:
            self._forget_full(now)

    def _forget_full(self, now: float) -> None:
        for principal, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * self.rate >= self.burst:
                del self._buckets[principal]
        if len(self._buckets) > MAX_BUCKETS:  # all busy: the oldest-counted go first
            for principal in sorted(self._buckets, key=lambda p: self._buckets[p][1])[
                : len(self._buckets) - MAX_BUCKETS
            ]:
                del self._buckets[principal]
