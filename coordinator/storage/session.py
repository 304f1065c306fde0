"""The session both engines hand the rooms: the connection (taking `?` placeholders), rows read
as dicts, and the few table helpers the rooms use (insert, upsert, get, count), written as plain
SQL that SQLite and PostgreSQL both speak."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeAlias

Parameters: TypeAlias = Sequence[Any] | Mapping[str, Any]


class Cursor(Protocol):
    """The part of a DB-API cursor the rooms read."""

    @property
    def rowcount(self) -> int: ...

    @property
    def description(self) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """A DB-API connection taking `?` placeholders, inside the store's transaction."""

    def execute(self, sql: str, parameters: Parameters = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Parameters], /) -> Cursor: ...


class RowNotFound(LookupError):
    """`Table.get` found no row with that key."""


def quoted(name: str) -> str:
    """A table or column name as an SQL identifier (`offset` is a keyword in PostgreSQL)."""
    if not name.replace("_", "").isalnum():
        raise ValueError(f"not a plain SQL name: {name!r}")
    return f'"{name}"'


class Session:
    """One engine's connection inside the store's transaction."""

    def __init__(self, conn: Connection, engine: str) -> None:
        self.conn = conn
        self.engine = engine

    def execute(self, sql: str, params: Parameters = ()) -> Cursor:
        return self.conn.execute(sql, params)

    def query(
        self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None
    ) -> Iterator[dict[str, Any]]:
        cursor = self.conn.execute(sql, () if params is None else params)
        names = [column[0] for column in cursor.description or ()]
        for row in cursor.fetchall():
            yield dict(zip(names, row, strict=True))

    def table(self, name: str) -> Table:
        return Table(self, name)

    def __getitem__(self, name: str) -> Table:
        return Table(self, name)


class Table:
    def __init__(self, session: Session, name: str) -> None:
        self.session = session
        self.name = name

    def _insert_sql(self, columns: Sequence[str], conflict: str = "") -> str:
        names = ", ".join(quoted(c) for c in columns)
        marks = ", ".join("?" for _ in columns)
        return f"INSERT INTO {quoted(self.name)} ({names}) VALUES ({marks}){conflict}"

    def insert(self, row: Mapping[str, Any]) -> None:
        self.insert_all([row])

    def insert_all(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self._write(list(rows), "")

    def upsert(self, row: Mapping[str, Any], pk: str) -> None:
        self.upsert_all([row], pk)

    def upsert_all(self, rows: Iterable[Mapping[str, Any]], pk: str) -> None:
        """Insert each row, or set the given columns of the row already there with its key."""
        self._write(list(rows), pk)

    def _write(self, rows: list[Mapping[str, Any]], pk: str) -> None:
        by_columns: dict[tuple[str, ...], list[Sequence[Any]]] = {}
        for row in rows:
            by_columns.setdefault(tuple(row), []).append(tuple(row.values()))
        for columns, values in by_columns.items():
            conflict = ""
            if pk:
                updates = [c for c in columns if c != pk]
                sets = ", ".join(f"{quoted(c)} = excluded.{quoted(c)}" for c in updates)
                action = f"DO UPDATE SET {sets}" if updates else "DO NOTHING"
                conflict = f" ON CONFLICT ({quoted(pk)}) {action}"
            self.session.conn.executemany(self._insert_sql(columns, conflict), values)

    def get(self, key: Any, pk: str = "id") -> dict[str, Any]:
        for row in self.session.query(
            f"SELECT * FROM {quoted(self.name)} WHERE {quoted(pk)} = ?", [key]
        ):
            return row
        raise RowNotFound(f"no row in {self.name} with {pk} {key!r}")

    def count_where(self, where: str, params: Sequence[Any] = ()) -> int:
        cursor = self.session.conn.execute(
            f"SELECT COUNT(*) FROM {quoted(self.name)} WHERE {where}", params
        )
        return int(cursor.fetchone()[0])
