"""Copying a coordinator's SQLite database into an empty PostgreSQL one, row for row, in one
transaction of the target: all of it, or (on any failure) no row.

The source is opened read-only and read in one snapshot while the copy holds its write lock;
it must be at this suanli's schema version. The target must hold no row, and is brought to
the same version by its own migrations (committed apart: a failed copy leaves that schema,
empty, as a new coordinator would make it).

Every table is copied with its stored values as they are (the log's entries and its stored
hashes, the ledger's transfers), in an order the foreign keys accept: PostgreSQL checks its
non-deferrable keys row by row. The immutability triggers refuse only UPDATE and DELETE,
so the copy's inserts pass them. Identity columns do not advance when values are given, so
each one's sequence is moved past the largest value copied before the commit.

`copy_database` runs the caller's `check` on both (the source's snapshot, the target's
transaction) once the rows are in: whatever it raises rolls the copy back.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import psycopg

from coordinator.storage import postgres
from coordinator.storage.engines import describe
from coordinator.storage.migrations import MIGRATIONS
from coordinator.storage.postgres import PostgresConnection
from coordinator.storage.session import Session, quoted
from shared.errors import SuanliError

T = TypeVar("T")

# The one table a fresh PostgreSQL schema has a row in: the log's size, 0.
SEEDED = {"log_meta": "SELECT 1 FROM log_meta WHERE size <> 0"}
# Tables whose rows a trigger checks against another table as it now stands, not by a key:
# a posting is refused into a closed period, and every posting was made before its period's
# close, so the postings go in first.
TRIGGER_ORDER = {"ledger_period_closes": {"ledger_postings"}}
WRITER_WAIT_MS = 5_000  # how long the move waits for an admin command writing the source
# The target's own bookkeeping (SQLite keeps its version in `user_version`).
TARGET_ONLY = {"suanli_schema"}


class CopyRefused(SuanliError):
    """The source or the target is not as a copy needs it; nothing was copied."""

    code = "copy_refused"


class CopyFailed(SuanliError):
    """The copy started and failed; its transaction was rolled back."""

    code = "copy_failed"


@dataclass(frozen=True)
class Copied(Generic[T]):
    """What a committed copy wrote: rows per table in the order copied, the next value each
    identity column gives, and what the caller's check returned."""

    tables: dict[str, int]
    sequences: dict[str, int]
    checked: T

    @property
    def rows(self) -> int:
        return sum(self.tables.values())


@dataclass(frozen=True)
class _Table:
    name: str
    columns: tuple[str, ...]
    order_by: tuple[str, ...]
    references: frozenset[str] = field(default_factory=frozenset)


@contextmanager
def source_database(path: Path) -> Iterator[Session]:
    """The SQLite file, read-only, while the move holds its write lock (an admin command run
    meanwhile waits, then fails, rather than change it after the copy's snapshot); refused
    unless it is a coordinator's database at this suanli's schema version."""
    if not path.is_file():
        raise CopyRefused(f"no SQLite database at {path}")
    reading = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    with closing(reading), closing(sqlite3.connect(path, isolation_level=None)) as lock:
        try:
            version = int(reading.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise CopyRefused(f"{path} is not a SQLite database ({exc})") from None
        _refuse_other_versions(path, version)
        try:
            lock.execute(f"PRAGMA busy_timeout = {WRITER_WAIT_MS}")
            lock.execute("BEGIN IMMEDIATE")  # writes nothing; ended below
        except sqlite3.OperationalError as exc:
            raise CopyRefused(
                f"another process is writing {path} ({exc}); try again when it is done"
            ) from None
        try:
            yield Session(reading, "sqlite")
        finally:
            lock.execute("ROLLBACK")


def _refuse_other_versions(path: Path, version: int) -> None:
    latest = len(MIGRATIONS)
    if version == 0:
        raise CopyRefused(f"{path} is not a Suanli coordinator's database (it has no schema)")
    if version > latest:
        raise CopyRefused(
            f"{path} is at schema version {version}, newer than this suanli knows "
            f"({latest}); move it with the suanli that wrote it"
        )
    if version < latest:
        raise CopyRefused(
            f"{path} is at schema version {version} and this suanli's is {latest}: run "
            f"`suanli-coordinator admin --db {path} check-ledger` once (it brings the file to "
            "this version and checks its ledger), then migrate again"
        )


@contextmanager
def target_database(url: str) -> Iterator[Session]:
    """The PostgreSQL database, refused unless it is empty, then migrated to this suanli's
    schema (which writes no rows but the log's size, 0)."""
    try:
        conn = postgres.open_connection(url)
    except psycopg.Error as exc:
        raise CopyRefused(f"cannot connect to {describe(url)}: {_why(exc)}") from None
    with closing(conn):
        target = Session(conn, postgres.ENGINE)
        _refuse_rows(target)
        try:
            postgres.migrate(conn)
        except RuntimeError as exc:  # a schema newer than this suanli's
            raise CopyRefused(f"{describe(url)}: {exc}") from None
        yield target


def tables_with_rows(target: Session) -> list[str]:
    """The tables of the target's schema holding a row that a fresh Suanli schema lacks."""
    raw = _raw(target)
    return [
        name
        for name in _target_tables(raw)
        if name not in TARGET_ONLY
        and raw.execute(f"{SEEDED.get(name, f'SELECT 1 FROM {quoted(name)}')} LIMIT 1").fetchone()
    ]


def copy_database(
    source: Session, target: Session, check: Callable[[Session, Session], T]
) -> Copied[T]:
    """Copy every table of `source` (SQLite, from `source_database`) into `target` (PostgreSQL,
    from `target_database`) in one transaction, run `check(source, target)` in it (both as
    copied), and commit."""
    raw = _raw(target)
    if not isinstance(source.conn, sqlite3.Connection):
        raise CopyRefused("the copy comes from a SQLite file (sqlite:PATH)")
    reader = source.conn
    reader.execute("BEGIN")  # one snapshot of the source, however long the copy takes
    try:
        tables = _source_tables(reader)
        try:
            _same_tables(tables, raw)
            postgres.begin(target.conn)  # type: ignore[arg-type]  # a PostgreSQL session's
        except psycopg.Error as exc:
            raise CopyFailed(f"PostgreSQL failed: {_why(exc)}; nothing was written") from exc
        try:
            copied = _copy_all(reader, raw, tables, lambda: check(source, target), target)
        except BaseException:
            with suppress(psycopg.Error):
                raw.execute("ROLLBACK")
            raise
        try:
            raw.execute("COMMIT")
        except psycopg.Error as exc:
            raise CopyFailed(
                f"the commit did not complete ({_why(exc)}): run the move again, which "
                "refuses if the copy was committed after all"
            ) from exc
    finally:
        reader.execute("ROLLBACK")
    return copied


def _copy_all(
    source: sqlite3.Connection,
    raw: psycopg.Connection[Any],
    tables: dict[str, _Table],
    check: Callable[[], T],
    target: Session,
) -> Copied[T]:
    _refuse_rows(target)  # again under the write lock: a coordinator may have started there
    counts: dict[str, int] = {}
    for table in _in_key_order(tables, _target_references(raw)):
        counts[table.name] = _copy_table(source, raw, table)
    for name, count in counts.items():
        on_target = raw.execute(f"SELECT COUNT(*) FROM {quoted(name)}").fetchone()
        if on_target is None or on_target[0] != count:
            raise CopyFailed(f"{name} has {on_target} rows on the target after copying {count}")
    sequences = _reset_sequences(raw)
    try:
        checked = check()
    except psycopg.Error as exc:
        raise CopyFailed(f"checking the copy failed: {_why(exc)}; nothing was written") from exc
    return Copied(counts, sequences, checked)


def _copy_table(source: sqlite3.Connection, raw: psycopg.Connection[Any], t: _Table) -> int:
    names = ", ".join(quoted(c) for c in t.columns)
    order = ", ".join(quoted(c) for c in t.order_by)
    count = 0
    try:
        if t.name in SEEDED:
            raw.execute(f"DELETE FROM {quoted(t.name)}")  # the fresh schema's row, replaced
        with raw.cursor().copy(f"COPY {quoted(t.name)} ({names}) FROM STDIN") as copy:
            for row in source.execute(f"SELECT {names} FROM {quoted(t.name)} ORDER BY {order}"):
                copy.write_row(row)
                count += 1
    except psycopg.Error as exc:
        raise CopyFailed(f"copying {t.name} failed: {_why(exc)}; nothing was written") from exc
    except sqlite3.Error as exc:
        raise CopyFailed(
            f"reading {t.name} from the SQLite file failed: {exc}; nothing was written"
        ) from exc
    return count


def _why(exc: psycopg.Error) -> str:
    """PostgreSQL's own sentence, on one line."""
    primary = exc.diag.message_primary if exc.diag else None
    text = (primary or str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _raw(target: Session) -> psycopg.Connection[Any]:
    if not isinstance(target.conn, PostgresConnection):
        raise CopyRefused("the copy goes into PostgreSQL (postgresql://USER@HOST/DBNAME)")
    return target.conn.raw


def _source_tables(conn: sqlite3.Connection) -> dict[str, _Table]:
    tables = {}
    names = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY name"
    ).fetchall()
    for (name,) in names:
        info = conn.execute(f"PRAGMA table_info({quoted(name)})").fetchall()
        columns = tuple(str(row[1]) for row in info)
        key = tuple(str(row[1]) for row in sorted(info, key=lambda row: row[5]) if row[5] > 0)
        references = frozenset(
            str(row[2]) for row in conn.execute(f"PRAGMA foreign_key_list({quoted(name)})")
        )
        tables[name] = _Table(name, columns, key or ("rowid",), references)
    return tables


def _target_tables(raw: psycopg.Connection[Any]) -> list[str]:
    return [
        str(row[0])
        for row in raw.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = "
            "current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name"
        )
    ]


def _target_references(raw: psycopg.Connection[Any]) -> dict[str, set[str]]:
    """Each table's foreign keys on the target (beside the source's own)."""
    found: dict[str, set[str]] = {}
    for table, referenced in raw.execute(
        "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint "
        "WHERE contype = 'f' AND connamespace = current_schema()::regnamespace"
    ):
        found.setdefault(str(table).strip('"'), set()).add(str(referenced).strip('"'))
    return found


def _same_tables(tables: dict[str, _Table], raw: psycopg.Connection[Any]) -> None:
    target = set(_target_tables(raw)) - TARGET_ONLY
    if set(tables) != target:
        raise CopyRefused(
            "the two schemas differ (only in the SQLite file: "
            f"{sorted(set(tables) - target) or 'none'}; only in PostgreSQL: "
            f"{sorted(target - set(tables)) or 'none'})"
        )
    for table in tables.values():
        columns = {
            str(row[0])
            for row in raw.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = %s",
                [table.name],
            )
        }
        if columns != set(table.columns):
            raise CopyRefused(
                f"{table.name} has columns {sorted(table.columns)} in the SQLite file and "
                f"{sorted(columns)} in PostgreSQL"
            )


def _in_key_order(tables: dict[str, _Table], target: dict[str, set[str]]) -> Iterator[_Table]:
    """Each table after the tables it refers to (itself excepted: its rows go in key order,
    each after those it names) and after those `TRIGGER_ORDER` puts first."""
    needs = {
        name: (set(t.references) | target.get(name, set()) | TRIGGER_ORDER.get(name, set()))
        - {name}
        for name, t in tables.items()
    }
    done: set[str] = set()
    while len(done) < len(tables):
        ready = sorted(name for name in tables if name not in done and needs[name] <= done)
        if not ready:
            raise CopyRefused(f"the tables' references go round in a circle: {needs}")
        for name in ready:
            done.add(name)
            yield tables[name]


def _reset_sequences(raw: psycopg.Connection[Any]) -> dict[str, int]:
    """Move each identity column's sequence past the largest value copied into it; the next
    value each will give, by `table.column`."""
    following = {}
    identities = raw.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND is_identity = 'YES' "
        "ORDER BY table_name, column_name"
    ).fetchall()
    for table, column in identities:
        largest = raw.execute(f"SELECT MAX({quoted(column)}) FROM {quoted(table)}").fetchone()
        next_value = (largest[0] if largest and largest[0] is not None else 0) + 1
        raw.execute(
            "SELECT setval(pg_get_serial_sequence(%s, %s), %s, false)",
            [quoted(table), column, next_value],
        )
        following[f"{table}.{column}"] = int(next_value)
    return following


def _refuse_rows(target: Session) -> None:
    held = tables_with_rows(target)
    if held:
        raise CopyRefused(
            f"the PostgreSQL database already holds rows (in {', '.join(held)}); the move "
            "goes only into an empty database: create a new one (createdb) and give it as --to"
        )
