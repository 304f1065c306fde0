"""Who is calling, for enterprises and auditors: bearer tokens, cached once looked up."""

from __future__ import annotations

from collections.abc import Callable

from coordinator import accounts
from coordinator.accounts import Principal
from coordinator.errors import Unauthenticated
from coordinator.limits import RateLimiter
from coordinator.storage import Database

TOKEN_LOOKUPS_PER_S, TOKEN_LOOKUP_BURST = 500, 2_000
MAX_CACHED = 100_000


class Principals:
    def __init__(self, database: Database, clock: Callable[[], int]) -> None:
        self.database = database
        self.clock = clock
        self._by_token_hash: dict[str, Principal] = {}
        # tokens not in the cache cost a database read each: all of them together are bounded,
        # so a flood of made-up tokens cannot stall the writer (known tokens are cached)
        self._lookups = RateLimiter(
            TOKEN_LOOKUPS_PER_S,
            TOKEN_LOOKUP_BURST,
            "requests with tokens this coordinator has not seen lately",
        )

    async def for_token(self, token: str) -> Principal:
        token_hash = accounts.hash_token(token)
        cached = self._by_token_hash.get(token_hash)
        if cached is not None:
            return cached
        self._lookups.take("all")
        now = self.clock()
        principal = await self.database.run(lambda db: accounts.lookup_token(db, token, now))
        if principal is None:
            raise Unauthenticated("the token is not valid")
        if len(self._by_token_hash) > MAX_CACHED:
            self._by_token_hash.clear()
        self._by_token_hash[token_hash] = principal
        return principal

    def forget_all(self) -> None:
        """A standby's refresh: tokens revoked on the leader are looked up (and refused)."""
        self._by_token_hash.clear()

    def forget(self, token_hash: str) -> None:
        """The token was revoked: its next use is looked up (and refused)."""
        self._by_token_hash.pop(token_hash, None)
