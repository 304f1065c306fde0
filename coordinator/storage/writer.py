"""The `Store` of both engines: one thread writes the database, in batches.

Every database call of the running service goes through `Database.run`: a single worker
thread takes whatever calls are queued, runs them in one transaction (each inside its own
savepoint, so one failure rolls back only itself), commits once, and then resolves the
callers' futures. The event loop never touches the database, and bursts share one commit.
Consecutive `run_grouped` calls of one group are handed to it together, so a burst of small
requests shares one pass as well. Each transaction first passes the `fence` it is given (a
leader's epoch check), so a writer that lost the lead commits nothing.

On SQLite a second thread copies the write-ahead log into the file (the checkpoint, with its
fsync) every second, so the writer's commits only append. On PostgreSQL a lost connection
fails the batch it broke and is opened again before the next.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from coordinator.storage import postgres
from coordinator.storage.engines import DatabaseError, begin, connect, sqlite_path
from coordinator.storage.session import Session
from coordinator.storage.sqlite import open_connection

T = TypeVar("T")
Item = TypeVar("Item")
log = logging.getLogger(__name__)
MAX_BATCH = 512
CHECKPOINT_INTERVAL_S = 1.0
RECONNECT_PAUSE_S = 0.5
_STOP = object()

Fence = Callable[[Session], None]


class Database:
    """One writer thread serving the event loop with batched transactions."""

    def __init__(self, location: Path | str) -> None:
        self.location = str(location)
        self.engine = postgres.ENGINE if postgres.is_postgres_url(self.location) else "sqlite"
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._checkpointer: threading.Thread | None = None
        self._stopping = threading.Event()
        self.db = connect(self.location)
        self.commits = 0
        self.fence: Fence | None = None
        self.batch_seconds = 0.0  # time spent in transactions, for the latency metric
        self.batches = 0

    @property
    def path(self) -> Path:
        """The SQLite file (an error on PostgreSQL, which has none)."""
        if self.engine != "sqlite":
            raise ValueError(f"{self.location} is not a file")
        return sqlite_path(self.location)

    def start(self) -> None:
        self._stopping.clear()
        if self.engine == "sqlite":
            # the writer only appends to the write-ahead log; copying it into the database
            # file (and the fsync that takes) is the checkpointer's job, off the writer's path
            self.db.conn.execute("PRAGMA wal_autocheckpoint = 0")
            self._checkpointer = threading.Thread(
                target=self._checkpoint, name="suanli-db-checkpoint", daemon=True
            )
            self._checkpointer.start()
        self._thread = threading.Thread(target=self._work, name="suanli-db", daemon=True)
        self._thread.start()

    def _checkpoint(self) -> None:
        conn = open_connection(self.path)
        try:
            while not self._stopping.wait(CHECKPOINT_INTERVAL_S):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:
                    log.warning("write-ahead log checkpoint failed: %s", exc)
        finally:
            conn.close()

    async def run(self, fn: Callable[[Session], T]) -> T:
        """Run `fn(db)` in the writer's next transaction and wait for the commit."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._put((fn, loop, future))
        return await future

    async def run_grouped(self, group: Callable[[Session, list[Item]], list[T]], item: Item) -> T:
        """Run `group(db, items)` once for this item and the ones queued right after it for the
        same `group`, in the writer's next transaction; each caller gets its own result.

        A burst of small requests so shares one pass over the database. If the group call
        raises, each of its items is run again alone, so a bad one fails only itself.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._put((_Grouped(group, item), loop, future))
        return await future

    def _put(self, entry: tuple[Any, Any, Any]) -> None:
        self._queue.put(entry)

    def submit(self, fn: Callable[[Session], Any]) -> None:
        """Queue a write nobody waits for (it still commits in order with the rest)."""
        self._queue.put((fn, None, None))

    async def flush(self) -> None:
        await self.run(lambda db: None)

    def close(self) -> None:
        self._stopping.set()  # a writer reconnecting to a database that is gone gives up
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
        if self._checkpointer is not None:
            self._checkpointer.join()
            self._checkpointer = None
            self.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.conn.close()  # type: ignore[attr-defined]  # both engines' connections close

    def _call(self, fn: Callable[[Session], Any]) -> tuple[Any, BaseException | None]:
        """One call in its own savepoint, so its failure rolls back only itself."""
        conn = self.db.conn
        conn.execute("SAVEPOINT call")
        try:
            value = fn(self.db)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            conn.execute("ROLLBACK TO call")
            conn.execute("RELEASE call")
            return None, exc
        conn.execute("RELEASE call")
        return value, None

    def _run_group(
        self, entries: list[tuple[Any, Any, Any]]
    ) -> list[tuple[Any, Any, Any, BaseException | None]]:
        group = entries[0][0].group
        values, error = self._call(lambda db: group(db, [fn.item for fn, _, _ in entries]))
        if error is None and len(values) == len(entries):
            return [
                (loop, future, value, None)
                for (_, loop, future), value in zip(entries, values, strict=True)
            ]
        if len(entries) == 1:
            if error is None:
                error = RuntimeError("a grouped call returned no result for its item")
            return [(entries[0][1], entries[0][2], None, error)]
        results: list[tuple[Any, Any, Any, BaseException | None]] = []
        for entry in entries:  # alone, each item stands or falls by itself
            results += self._run_group([entry])
        return results

    def _reconnect(self) -> None:
        """After PostgreSQL dropped the connection: open it again (the queue waits)."""
        while not self._stopping.is_set():
            try:
                self.db = connect(self.location)
                return
            except psycopg.OperationalError as exc:
                log.warning("reconnecting to the database failed: %s", exc)
                time.sleep(RECONNECT_PAUSE_S)

    def _begin(self) -> None:
        begin(self.db)
        if self.fence is not None:
            self.fence(self.db)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A fenced writing transaction on the writer's connection, before the writer starts
        (the service's start-up writes)."""
        self._begin()
        try:
            yield self.db
        except BaseException:
            self.db.conn.execute("ROLLBACK")
            raise
        self.db.conn.execute("COMMIT")

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            began = time.monotonic()
            try:
                self._begin()
                results = self._run_batch(batch)
                self.db.conn.execute("COMMIT")
                self.commits += 1
            except BaseException as exc:  # noqa: BLE001 - fenced, or the connection went away
                self._rollback()
                results = [(loop, future, None, exc) for _, loop, future in batch]
            self.batch_seconds += time.monotonic() - began
            self.batches += 1
            for loop, future, value, error in results:
                if future is not None:
                    loop.call_soon_threadsafe(_settle, future, value, error)
                elif error is not None:
                    log.error("a queued database write failed: %r", error)
            if stop:
                return

    def _run_batch(
        self, batch: list[tuple[Any, Any, Any]]
    ) -> list[tuple[Any, Any, Any, BaseException | None]]:
        results: list[tuple[Any, Any, Any, BaseException | None]] = []
        at = 0
        while at < len(batch):
            fn, loop, future = batch[at]
            if isinstance(fn, _Grouped):
                end = at + 1
                while (
                    end < len(batch)
                    and isinstance(batch[end][0], _Grouped)
                    and batch[end][0].group == fn.group
                ):
                    end += 1
                results += self._run_group(batch[at:end])
                at = end
                continue
            value, error = self._call(fn)
            results.append((loop, future, value, error))
            at += 1
        return results

    def _rollback(self) -> None:
        try:
            self.db.conn.execute("ROLLBACK")
        except DatabaseError:
            pass
        if self._connection_lost():
            self._reconnect()

    def _connection_lost(self) -> bool:
        raw = getattr(self.db.conn, "raw", None)
        return raw is not None and bool(raw.closed or raw.broken)


@dataclass(frozen=True)
class _Grouped:
    group: Callable[[Session, list[Any]], list[Any]]
    item: Any


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
