"""Storage: the coordinator's database behind one seam, on SQLite or PostgreSQL.

Above the seam, rooms are handed a `Session` inside a transaction of the `Database` (the one
`Store`) and write plain SQL with `?` placeholders that both engines speak (`session`). Below
it: `engines` picks the engine a `--db` names (`sqlite:PATH` or a plain path; `postgresql://`),
`sqlite` and `postgres` open and migrate each, `migrations` and `postgres_migrations` hold the
same numbered schema in each dialect, and `writer` is the one thread that writes (`Database`).

Both engines give the rooms the same things:

- One writer taking queued calls in batches, one transaction per batch, each call in its own
  savepoint (a failing call rolls back only itself); a writing transaction holds the engine's
  write lock from its start (SQLite's `BEGIN IMMEDIATE`; on PostgreSQL an advisory transaction
  lock), so admin commands and the writer queue rather than interleave. A leader's `fence`
  runs first in each of the writer's transactions.
- Rows as tuples of ints, text and bytes (PostgreSQL's NUMERIC sums come back as ints, and
  booleans are stored as 0 and 1 as SQLite stores them); `query` gives dicts.
- The immutability triggers: UPDATE and DELETE (and on PostgreSQL TRUNCATE) refused on log
  entries and on the ledger's transfers, postings, reservations, period closes and
  statements; an account's identity columns fixed; postings refused into a closed period. The
  refusal reaches the caller as the engine's integrity error (`IntegrityError` names both).
- Upserts as `INSERT ... ON CONFLICT (...) DO UPDATE SET col = excluded.col` and
  `ON CONFLICT DO NOTHING`; `RETURNING` for a new row's identity.

What stays the engine's own business: SQLite's WAL checkpointer (keeping the writer's commits
append-only and the file bounded); PostgreSQL's reconnection after a lost connection.
"""

from coordinator.storage.engines import (
    DatabaseError,
    DatabaseUnreachable,
    IntegrityError,
    begin,
    connect,
    describe,
    sqlite_path,
    transaction,
)
from coordinator.storage.interface import Connection, Cursor, Store
from coordinator.storage.postgres import is_postgres_url
from coordinator.storage.session import RowNotFound, Session, Table
from coordinator.storage.writer import Database, Fence

__all__ = [
    "Connection",
    "Cursor",
    "Database",
    "DatabaseError",
    "DatabaseUnreachable",
    "Fence",
    "IntegrityError",
    "RowNotFound",
    "Session",
    "Store",
    "Table",
    "begin",
    "connect",
    "describe",
    "is_postgres_url",
    "sqlite_path",
    "transaction",
]
