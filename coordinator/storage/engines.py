"""Which engine a `--db` names, and what differs between the two where a transaction begins:
`sqlite:PATH` (or a plain path) for SQLite, `postgresql://...` for PostgreSQL."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import psycopg

from coordinator.storage import postgres, sqlite
from coordinator.storage.session import Session
from shared.errors import SuanliError

S = TypeVar("S", bound=Session)

SQLITE_PREFIX = "sqlite:"
# what either engine raises for a refused row (a key, a check, a trigger) and for any failure
IntegrityError = (sqlite3.IntegrityError, psycopg.IntegrityError)
DatabaseError = (sqlite3.Error, psycopg.Error)


def sqlite_path(location: str | Path) -> Path:
    text = str(location)
    return Path(text[len(SQLITE_PREFIX) :] if text.startswith(SQLITE_PREFIX) else text)


def describe(location: str | Path) -> str:
    """The database as an operator reads it: a file, or a server without its password."""
    text = str(location)
    if not postgres.is_postgres_url(text):
        return str(sqlite_path(text))
    text = re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", text)
    scheme, _, rest = text.partition("://")
    who, at, where = rest.rpartition("@")
    return f"{scheme}://{who.split(':')[0]}{at}{where}" if at else text


class DatabaseUnreachable(SuanliError):
    """The database a `--db` names cannot be opened."""

    code = "database_unreachable"


def connect(location: str | Path) -> Session:
    """Open (creating if needed) and migrate the database `location` names."""
    text = str(location)
    try:
        if postgres.is_postgres_url(text):
            return postgres.connect(text)
        return sqlite.connect(sqlite_path(text))
    except (psycopg.OperationalError, sqlite3.OperationalError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseUnreachable(f"cannot open the database {describe(text)}: {reason}") from None


def begin(db: Session) -> None:
    """Begin a writing transaction that holds the engine's write lock from its start, so a
    second writer waits rather than failing at commit."""
    if db.engine == postgres.ENGINE:
        postgres.begin(db.conn)  # type: ignore[arg-type]  # a PostgreSQL session's connection
    else:
        db.conn.execute("BEGIN IMMEDIATE")


@contextmanager
def transaction(db: S) -> Iterator[S]:
    """One writing transaction (for admin commands and start-up)."""
    begin(db)
    try:
        yield db
    except BaseException:
        db.conn.execute("ROLLBACK")
        raise
    db.conn.execute("COMMIT")


def check_location(text: str) -> str:
    """A `--db` value as typed, or ValueError naming what is wrong with it."""
    if not text.strip():
        raise ValueError("--db is empty; give a SQLite file path or postgresql://USER@HOST/DBNAME")
    if "://" in text and not postgres.is_postgres_url(text):
        scheme = text.split("://", 1)[0]
        raise ValueError(
            f"--db {scheme}://...: Suanli runs on SQLite (a file path, or sqlite:PATH) or "
            "PostgreSQL (postgresql://USER@HOST/DBNAME)"
        )
    if postgres.is_postgres_url(text):
        try:
            psycopg.conninfo.conninfo_to_dict(text)
        except psycopg.ProgrammingError as exc:
            raise ValueError(f"--db {describe(text)} is not a PostgreSQL URL: {exc}") from None
    return text
