"""What the rooms above storage are handed, as types an engine other than SQLite can implement.

A room's function runs inside the store's transaction and is given a `Session`; it writes SQL
with `?` placeholders through `session.conn` (a DB-API `Connection`) or reads rows as dicts
with `session.query`. A `Store` runs those functions on its one writer, in batches that share
a commit, each function in its own savepoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeAlias, TypeVar

T = TypeVar("T")
Item = TypeVar("Item")

Parameters: TypeAlias = Sequence[Any] | Mapping[str, Any]


class Cursor(Protocol):
    """The part of a DB-API cursor the rooms read."""

    @property
    def rowcount(self) -> int: ...

    @property
    def lastrowid(self) -> int | None: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """A DB-API connection taking `?` placeholders, inside the store's transaction."""

    def execute(self, sql: str, parameters: Parameters = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Parameters], /) -> Cursor: ...


class Session(Protocol):
    """What `Store.run` hands a function: the connection, and rows read as dicts."""

    @property
    def conn(self) -> Connection: ...

    def query(
        self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None
    ) -> Iterator[dict[str, Any]]: ...


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
