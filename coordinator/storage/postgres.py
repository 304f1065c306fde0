"""The PostgreSQL engine's connections (psycopg 3): the rooms' `?` placeholders translated,
integers and byte strings as SQLite returns them, migrations under a lock, and the write lock
every writing transaction takes first, so writers queue as they do on SQLite's one file."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from decimal import Decimal
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.adapt import Buffer, Dumper, Loader

from coordinator.storage.interface import Cursor, Parameters
from coordinator.storage.postgres_migrations import POSTGRES_MIGRATIONS
from coordinator.storage.session import Session

ENGINE = "postgresql"
URL_SCHEMES = ("postgresql://", "postgres://")
# pg_advisory_xact_lock keys: Suanli's writers, and the migrations
WRITE_LOCK = 0x5375616E6C6901  # "Suanli" 01
MIGRATION_LOCK = 0x5375616E6C6902
CONNECT_TIMEOUT_S = 10
_PLACEHOLDER = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\?|%|::|:[A-Za-z_]\w*")
# an INSERT of one row of `?` values and nothing more: many rows of it can go as one COPY
_PLAIN_INSERT = re.compile(
    r"\s*INSERT INTO (\w+) \(\s*(\w+(?:\s*,\s*\w+)*)\s*\) VALUES \(\s*(\?(?:\s*,\s*\?)*)\s*\)\s*",
    re.IGNORECASE,
)


def is_postgres_url(location: str) -> bool:
    return location.startswith(URL_SCHEMES)


@lru_cache(maxsize=4096)
def translate(sql: str) -> str:
    """`?` and `:name` placeholders as psycopg's `%s` and `%(name)s`, and a literal `%`
    doubled (inside quoted text too, which psycopg also reads); `::` casts untouched."""

    def swap(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "?":
            return "%s"
        if token == "%":
            return "%%"
        if token.startswith(":") and token != "::":
            return f"%({token[1:]})s"
        return token.replace("%", "%%")  # psycopg reads `%` inside quoted text too

    return _PLACEHOLDER.sub(swap, sql)


class _IntegralNumeric(Loader):
    """SUM over BIGINT is NUMERIC in PostgreSQL: an integral one comes back as an int."""

    def load(self, data: Buffer) -> int | Decimal:
        text = bytes(data).decode()
        return int(text) if text.lstrip("-").isdigit() else Decimal(text)


class _BoolAsInteger(Dumper):
    """SQLite stores True as 1; the same columns here are BIGINT."""

    oid = psycopg.adapters.types["int8"].oid

    def dump(self, obj: Any) -> bytes:
        return b"1" if obj else b"0"


class PostgresConnection:
    """A psycopg connection speaking the rooms' dialect: `?` placeholders, tuples back."""

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, parameters: Parameters = (), /) -> Cursor:
        return self.raw.execute(translate(sql), parameters)

    def executemany(self, sql: str, parameters: Iterable[Parameters], /) -> Cursor:
        """Each row of `parameters` through `sql`, in as few round trips as it allows: none for
        no rows, one statement for one, and a COPY for the rows of a plain INSERT (half the
        time of psycopg's pipelined executemany, or less, at a receipt batch's size; the
        tables' row triggers and constraints hold for COPY as for INSERT)."""
        rows = list(parameters)
        if not rows:
            return self.raw.cursor()
        if len(rows) == 1:
            return self.execute(sql, rows[0])
        copy = _copy_statement(sql)
        cursor = self.raw.cursor()
        sequences = [row for row in rows if not isinstance(row, Mapping)]
        if copy is not None and len(sequences) == len(rows):
            with cursor.copy(copy) as stream:
                for row in sequences:
                    stream.write_row(row)
            return cursor
        cursor.executemany(translate(sql), rows)
        return cursor

    def close(self) -> None:
        self.raw.close()


@lru_cache(maxsize=256)
def _copy_statement(sql: str) -> str | None:
    """`COPY table (columns) FROM STDIN` for a plain one-row INSERT of `?` values, else None."""
    plain = _PLAIN_INSERT.fullmatch(sql)
    if plain is None:
        return None
    table, columns, values = plain.groups()
    names = [name.strip() for name in columns.split(",")]
    if len(names) != values.count("?"):
        return None
    return f"COPY {table} ({', '.join(names)}) FROM STDIN"


def open_connection(url: str) -> PostgresConnection:
    """An autocommit connection: transactions are begun and ended explicitly, as on SQLite."""
    raw = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
    raw.adapters.register_loader("numeric", _IntegralNumeric)
    raw.adapters.register_dumper(bool, _BoolAsInteger)
    raw.execute("SET TIME ZONE 'UTC'")
    return PostgresConnection(raw)


def begin(conn: PostgresConnection) -> None:
    """Begin a writing transaction holding Suanli's write lock (released at its end)."""
    conn.raw.execute("BEGIN")
    conn.raw.execute("SELECT pg_advisory_xact_lock(%s)", [WRITE_LOCK])


def connect(url: str) -> Session:
    """Open and migrate the database; for admin commands and the writer."""
    conn = open_connection(url)
    migrate(conn)
    return Session(conn, ENGINE)


def schema_version(conn: PostgresConnection) -> int:
    row = conn.raw.execute(
        "SELECT 1 FROM information_schema.tables WHERE table_name = 'suanli_schema' "
        "AND table_schema = current_schema()"
    ).fetchone()
    if row is None:
        return 0
    version = conn.raw.execute("SELECT version FROM suanli_schema").fetchone()
    return 0 if version is None else int(version[0])


def migrate(conn: PostgresConnection) -> int:
    """Run the migrations this database has not seen, each in its own transaction; several
    coordinators starting at once take turns under the migration lock."""
    latest = len(POSTGRES_MIGRATIONS)
    conn.raw.execute("SELECT pg_advisory_lock(%s)", [MIGRATION_LOCK])
    try:
        version = schema_version(conn)
        if version > latest:
            raise RuntimeError(
                f"database schema version {version} is newer than this coordinator knows "
                f"({latest}); upgrade suanli"
            )
        for number, script in enumerate(POSTGRES_MIGRATIONS[version:], start=version + 1):
            with conn.raw.transaction():
                conn.raw.execute(script.encode())
                conn.raw.execute(
                    "CREATE TABLE IF NOT EXISTS suanli_schema (version BIGINT NOT NULL)"
                )
                conn.raw.execute("DELETE FROM suanli_schema")
                conn.raw.execute("INSERT INTO suanli_schema (version) VALUES (%s)", [number])
    finally:
        conn.raw.execute("SELECT pg_advisory_unlock(%s)", [MIGRATION_LOCK])
    return latest
