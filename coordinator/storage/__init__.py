"""Storage: the coordinator's database behind one seam.

Above the seam, rooms are handed a `Session` inside a transaction of a `Store` and write plain
SQL with `?` placeholders (`interface`). Below it is the SQLite engine: `sqlite` opens and
migrates the file, `migrations` holds the numbered schema, `writer` is the one thread that
writes it (`Database`, the engine's Store). Nothing above needs to know the engine but the SQL
text itself.

What a second engine (PostgreSQL, next) must provide:

- A `Store`: one writer taking queued calls in batches, one transaction per batch, each call in
  its own savepoint (a failing call rolls back only itself; a failed commit fails the batch),
  `run_grouped` handing consecutive calls of one group over together; and an admin
  `transaction` (today `BEGIN IMMEDIATE`: it must take the write lock up front, so a second
  writer waits rather than failing at commit).
- Savepoints nested inside that transaction (`SAVEPOINT` / `ROLLBACK TO` / `RELEASE`): the log's
  `append_entries` and the ledger's batches open their own. After a failed statement the
  transaction must be usable again once rolled back to the savepoint (PostgreSQL refuses every
  statement until then, so the writer must roll back before the next call runs).
- A `Session` whose `conn` takes `?` placeholders (or translates them), `executemany`, and
  `query` yielding rows as dicts; `Cursor.rowcount` and `lastrowid` after an insert (rooms read
  `lastrowid` for INTEGER PRIMARY KEY rows: a second engine needs `RETURNING id` behind it).
- Its own migrations to the same tables: 64-bit integers, byte strings (`BLOB`: `bytea`), text,
  CHECK constraints, partial indexes (`WHERE ... IS NOT NULL`), foreign keys checked at commit
  of a migration that rebuilds a table, and a schema version (today `PRAGMA user_version`).
  SQLite's own spellings stay in `migrations`: `WITHOUT ROWID`, `typeof()`, `rowid` in the
  migration that rebuilt the receipts table, `INSERT OR IGNORE`, `IF NOT EXISTS` triggers.
- The immutability triggers: UPDATE and DELETE refused on log entries and on the ledger's
  transfers, postings, reservations, period closes and statements; an account's identity
  columns fixed; postings refused into a closed period. SQLite spells them
  `RAISE(ABORT, ...)`; the error must reach the caller as the engine's integrity error.
- Upserts as `INSERT ... ON CONFLICT (...) DO UPDATE SET col = excluded.col` and
  `ON CONFLICT DO NOTHING` (the log uses these; both engines speak them).
- SQLite-only features still above the seam, outside this package and the log (to move before
  a second engine lands): `INSERT OR IGNORE` / `INSERT OR REPLACE` in other rooms, sqlite_utils'
  table helpers (`db["t"].insert`, `upsert`, `upsert_all`, `insert_all`, `get`,
  `count_where`), `sqlite3.Connection` annotations, and `except sqlite3.IntegrityError` /
  `OperationalError` in the service and the ledger (a second engine maps its errors to names
  this package would export).
- What the WAL checkpointer does here (keeping the writer's commits append-only and the log file
  bounded) is the engine's own business; a server engine needs none of it.
"""

from coordinator.storage.interface import Connection, Cursor, Session, Store
from coordinator.storage.sqlite import connect, transaction
from coordinator.storage.writer import Database

__all__ = ["Connection", "Cursor", "Database", "Session", "Store", "connect", "transaction"]
