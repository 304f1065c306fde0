"""The SQLite engine's `Store`: one thread writes the database, in batches.

Every database call of the running service goes through `Database.run`: a single worker
thread takes whatever calls are queued, runs them in one transaction (each inside its own
savepoint, so one failure rolls back only itself), commits once, and then resolves the
callers' futures. The event loop never touches SQLite, and bursts share one commit.
Consecutive `run_grouped` calls of one group are handed to it together, so a burst of small
requests shares one pass as well. A second thread copies the write-ahead log into the file
(the checkpoint, with its fsync) every second, so the writer's commits only append.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from coordinator.storage.sqlite import connect, open_connection

T = TypeVar("T")
Item = TypeVar("Item")
log = logging.getLogger(__name__)
MAX_BATCH = 512
CHECKPOINT_INTERVAL_S = 1.0
_STOP = object()


class Database:
    """One writer thread serving the event loop with batched transactions."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._checkpointer: threading.Thread | None = None
        self._stopping = threading.Event()
        self.db = connect(self.path)
        self.commits = 0

    def start(self) -> None:
        # the writer only appends to the write-ahead log; copying it into the database file
        # (and the fsync that takes) is the checkpointer's job, off the writer's path
        self.db.conn.execute("PRAGMA wal_autocheckpoint = 0")
        self._stopping.clear()
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

    async def run(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        """Run `fn(db)` in the writer's next transaction and wait for the commit."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._put((fn, loop, future))
        return await future

    async def run_grouped(
        self, group: Callable[[sqlite_utils.Database, list[Item]], list[T]], item: Item
    ) -> T:
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

    def submit(self, fn: Callable[[sqlite_utils.Database], Any]) -> None:
        """Queue a write nobody waits for (it still commits in order with the rest)."""
        self._queue.put((fn, None, None))

    async def flush(self) -> None:
        await self.run(lambda db: None)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
        if self._checkpointer is not None:
            self._stopping.set()
            self._checkpointer.join()
            self._checkpointer = None
            self.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.conn.close()

    def _call(self, fn: Callable[[sqlite_utils.Database], Any]) -> tuple[Any, BaseException | None]:
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

    def _work(self) -> None:
        conn = self.db.conn
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
            results: list[tuple[Any, Any, Any, BaseException | None]] = []
            conn.execute("BEGIN IMMEDIATE")
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
            try:
                conn.execute("COMMIT")
                self.commits += 1
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK")
                results = [(loop, future, None, exc) for loop, future, _, _ in results]
            for loop, future, value, error in results:
                if future is not None:
                    loop.call_soon_threadsafe(_settle, future, value, error)
                elif error is not None:
                    log.error("a queued database write failed: %r", error)
            if stop:
                return


@dataclass(frozen=True)
class _Grouped:
    group: Callable[[sqlite_utils.Database, list[Any]], list[Any]]
    item: Any


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
