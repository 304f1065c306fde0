"""What the rooms above storage are handed.

A room's function runs inside the store's transaction and is given a `Session`
(`coordinator.storage.session`); it writes SQL with `?` placeholders through `session.conn` (a
DB-API `Connection`) or reads rows as dicts with `session.query`. A `Store` runs those
functions on its one writer, in batches that share a commit, each in its own savepoint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from coordinator.storage.session import Connection, Cursor, Parameters, Session

T = TypeVar("T")
Item = TypeVar("Item")

__all__ = ["Connection", "Cursor", "Parameters", "Session", "Store"]


class Store(Protocol):
    """One writer serving the event loop with batched transactions."""

    def start(self) -> None:
        """Start the writer (and whatever keeps the engine's files in shape)."""

    def close(self) -> None:
        """Finish the queued work, stop the writer and close the connection."""

    async def run(self, fn: Callable[[Session], T]) -> T:
        """Run `fn(session)` in the writer's next transaction and wait for the commit."""

    async def run_grouped(self, group: Callable[[Session, list[Item]], list[T]], item: Item) -> T:
        """Run `group(session, items)` once for this item and the ones queued right after it
        for the same group; a failing group is run again item by item."""

    def submit(self, fn: Callable[[Session], Any]) -> None:
        """Queue a write nobody waits for; it still commits in order with the rest."""

    async def flush(self) -> None:
        """Wait until everything queued so far has committed."""
