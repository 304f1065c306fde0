"""The two pieces of SQL every billing module leans on: a savepoint that makes a function all
or nothing, and `IN` queries asked in chunks SQLite accepts."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from coordinator.storage import Session

_CHUNK = 500


@contextmanager
def savepoint(db: Session, name: str = "ledger") -> Iterator[None]:
    """All or nothing inside whatever transaction the caller (or the writer thread) holds."""
    conn = db.conn
    conn.execute(f"SAVEPOINT {name}")
    try:
        yield
    except BaseException:
        conn.execute(f"ROLLBACK TO {name}")
        conn.execute(f"RELEASE {name}")
        raise
    conn.execute(f"RELEASE {name}")


def rows_in(db: Session, query: str, values: Sequence[Any]) -> list[Any]:
    """The rows of `query` (ending in `IN`) for each of `values`, asked 500 at a time."""
    rows: list[Any] = []
    for at in range(0, len(values), _CHUNK):
        chunk = list(values[at : at + _CHUNK])
        rows += db.conn.execute(f"{query} ({','.join('?' * len(chunk))})", chunk).fetchall()
    return rows
