"""The SQLite engine's connections: opened in WAL mode with the pragmas the writer relies on,
and migrated."""

from __future__ import annotations

import fcntl
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from coordinator.storage.migrations import MIGRATIONS
from coordinator.storage.session import Session

ENGINE = "sqlite"

WAL_SIZE_LIMIT = 64 << 20  # what a checkpointed write-ahead log is cut back to
PAGE_CACHE_KIB = 256 << 10
BUSY_TIMEOUT_S = 30


class InUse(Exception):
    """Another process holds the lock a coordinator serving this SQLite file holds."""


@contextmanager
def sole_user(path: Path | str) -> Iterator[None]:
    """Hold the lock beside a SQLite file (`FILE.lock`) that the one coordinator serving it
    holds while it serves; raises InUse when another process holds it."""
    with open(f"{path}.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InUse(str(path)) from None
        yield


def open_connection(path: Path | str) -> sqlite3.Connection:
    """An autocommit connection: transactions are begun and ended explicitly."""
    return sqlite3.connect(
        str(path), isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S
    )


def connect(path: Path | str) -> Session:
    """Open (creating if needed) and migrate the database; for admin commands and the writer."""
    conn = open_connection(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA foreign_keys = ON")
    # what is deleted (secret env values at a job's end) is overwritten, not left in free pages
    conn.execute("PRAGMA secure_delete = ON")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
    # savepoints keep the pages they change in a statement journal: in memory, not a temp file
    conn.execute("PRAGMA temp_store = MEMORY")
    # receipts, transfers and the log are indexed by hashes: inserts land on random pages
    conn.execute(f"PRAGMA cache_size = -{PAGE_CACHE_KIB}")
    conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
    migrate(conn)
    return Session(conn, ENGINE)


def migrate(conn: sqlite3.Connection) -> int:
    """Run the migrations this database has not seen, each in its own transaction."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise RuntimeError(
            f"database schema version {version} is newer than this coordinator knows "
            f"({len(MIGRATIONS)}); upgrade suanli"
        )
    if version == len(MIGRATIONS):
        return int(version)
    # a migration may rebuild a table others refer to; the references are checked after it
    enforced = conn.execute("PRAGMA foreign_keys").fetchone()[0]
    conn.execute("PRAGMA foreign_keys = OFF")
    try:
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;"
            )
            broken = conn.execute("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise RuntimeError(
                    f"migration {number} left rows whose references do not resolve: {broken[:5]}"
                )
    finally:
        conn.execute(f"PRAGMA foreign_keys = {'ON' if enforced else 'OFF'}")
    return len(MIGRATIONS)
