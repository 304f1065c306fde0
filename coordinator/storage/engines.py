"""Which engine a `--db` names, and what differs between the two where a transaction begins:
`sqlite:PATH` (or a plain path) for SQLite, `postgresql://...` for PostgreSQL."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator
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


_PASSWORD_IN_URL = re.compile(r"(?i)(postgres(?:ql)?://[^:/@\s\"']*):[^@\s\"']*@")
_PASSWORD_PARAMETER = re.compile(r"(?i)(\bpassword\s*=\s*)('[^']*'|[^&\s\"']*)")


def redact(text: str) -> str:
    """`text` (a URL, or a message quoting one) without any password in it."""
    return _PASSWORD_PARAMETER.sub(r"\1***", _PASSWORD_IN_URL.sub(r"\1@", text))


def describe(location: str | Path) -> str:
    """The database as an operator reads it: a file, or a server without its password."""
    text = str(location)
    if not postgres.is_postgres_url(text):
        return str(sqlite_path(text))
    return redact(text)


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
        message = redact(str(exc)).strip()
        reason = message.splitlines()[0] if message else type(exc).__name__
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
    if re.match(r"\s*\w+\s*=", text):
        raise ValueError(
            "--db looks like PostgreSQL's key=value form; write it as a URL, "
            "postgresql://USER@HOST/DBNAME (a file name cannot start with NAME=)"
        )
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
            raise ValueError(
                f"--db {describe(text)} is not a PostgreSQL URL: {redact(str(exc))}"
            ) from None
    return text


def clock_offset_ms(db: Session, local_now: Callable[[], int]) -> int:
    """How far the database's clock is ahead of this process's (0 on SQLite, whose clock is
    this machine's): times several coordinators write are kept on the database's clock."""
    if db.engine != postgres.ENGINE:
        return 0
    before = local_now()
    row = db.conn.execute("SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint")
    database_now = int(row.fetchone()[0])
    return database_now - (before + local_now()) // 2
