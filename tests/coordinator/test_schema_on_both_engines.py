"""Both engines' migrations build the same schema: every table with the same columns in the
same order and of matching types, the same primary keys and NOT NULLs, and the same tables
guarded by the same refusing triggers (on PostgreSQL, TRUNCATE refused wherever DELETE is)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import databases
import pytest
from databases import ENGINES, closed_after_the_test, shared_cluster

from coordinator.storage import connect

pytestmark = pytest.mark.skipif(
    not {"sqlite", "postgresql"} <= set(ENGINES), reason="compares the two engines"
)

# SQLite's declared type -> PostgreSQL's
MATCHING_TYPES = {"INTEGER": "bigint", "TEXT": "text", "BLOB": "bytea"}
# bookkeeping each engine keeps its own way (SQLite: PRAGMA user_version)
ENGINE_OWN = {"sqlite_sequence", "suanli_schema"}
_SQLITE_EVENT = re.compile(r"\b(?:BEFORE|AFTER)\s+(INSERT|UPDATE|DELETE)\b.*?\bON\s+(\w+)", re.S)

Column = tuple[str, str, bool]  # name, type (PostgreSQL's name), NOT NULL
Schema = dict[str, tuple[list[Column], list[str]]]  # table -> columns, primary key


def _sqlite_schema(path: Path) -> tuple[Schema, set[tuple[str, str]]]:
    closed_after_the_test(connect(path))
    tables = [
        name
        for (name,) in databases.rows(
            path, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
        )
        if name not in ENGINE_OWN
    ]
    schema: Schema = {}
    for table in tables:
        info = databases.rows(path, f'PRAGMA table_info("{table}")')
        columns = [
            # a primary key column is NOT NULL on PostgreSQL, and as a rowid on SQLite
            (name, MATCHING_TYPES.get(kind.upper(), kind), bool(notnull or pk))
            for _, name, kind, notnull, _, pk in info
        ]
        key = [name for *_, name, _, _, _, pk in sorted(info, key=lambda c: c[5]) if pk]
        schema[table] = (columns, key)
    events = set()
    for (sql,) in databases.rows(path, "SELECT sql FROM sqlite_master WHERE type = 'trigger'"):
        match = _SQLITE_EVENT.search(sql)
        assert match, sql
        events.add((match.group(2), match.group(1)))
    return schema, events


def _postgres_schema(url: str) -> tuple[Schema, set[tuple[str, str]]]:
    closed_after_the_test(connect(url))
    here = "table_schema = current_schema()"
    tables = [
        name
        for (name,) in databases.rows(
            url,
            f"SELECT table_name FROM information_schema.tables WHERE {here} ORDER BY table_name",
        )
        if name not in ENGINE_OWN
    ]
    schema: Schema = {}
    for table in tables:
        columns = [
            (name, kind, nullable == "NO")
            for name, kind, nullable in databases.rows(
                url,
                "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
                f"WHERE {here} AND table_name = ? ORDER BY ordinal_position",
                [table],
            )
        ]
        key = [
            name
            for (name,) in databases.rows(
                url,
                "SELECT k.column_name FROM information_schema.table_constraints c "
                "JOIN information_schema.key_column_usage k "
                "ON k.constraint_name = c.constraint_name AND k.table_schema = c.table_schema "
                f"WHERE c.{here} AND c.table_name = ? AND c.constraint_type = 'PRIMARY KEY' "
                "ORDER BY k.ordinal_position",
                [table],
            )
        ]
        schema[table] = (columns, key)
    events = _postgres_trigger_events(url)
    return schema, events


def _postgres_trigger_events(url: str) -> set[tuple[str, str]]:
    """(table, event) for each user trigger; TRUNCATE included (information_schema omits it)."""
    # tgtype's bits: 4 INSERT, 8 DELETE, 16 UPDATE, 32 TRUNCATE
    bits = {"INSERT": 4, "DELETE": 8, "UPDATE": 16, "TRUNCATE": 32}
    found: set[tuple[str, str]] = set()
    rows: list[tuple[Any, ...]] = databases.rows(
        url,
        "SELECT c.relname, t.tgtype FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "WHERE NOT t.tgisinternal AND c.relnamespace = current_schema()::regnamespace",
    )
    for table, kind in rows:
        found |= {(table, event) for event, bit in bits.items() if kind & bit}
    return found


@pytest.fixture(scope="module")
def schemas(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("schema") / "coordinator.db"
    return {
        "sqlite": _sqlite_schema(path),
        "postgresql": _postgres_schema(shared_cluster().create_database()),
    }


def test_the_same_tables_on_both_engines(schemas: dict[str, Any]) -> None:
    sqlite, postgresql = schemas["sqlite"][0], schemas["postgresql"][0]
    assert sorted(sqlite) == sorted(postgresql)
    assert len(sqlite) > 20


def test_every_table_has_the_same_columns_types_keys_and_not_nulls(
    schemas: dict[str, Any],
) -> None:
    sqlite, postgresql = schemas["sqlite"][0], schemas["postgresql"][0]
    for table in sorted(set(sqlite) & set(postgresql)):
        (lite_columns, lite_key), (pg_columns, pg_key) = sqlite[table], postgresql[table]
        assert lite_columns == pg_columns, table
        assert lite_key == pg_key, table
        assert lite_key, f"{table} has no primary key"


def test_the_same_tables_are_guarded_by_triggers_and_truncate_is_refused_too(
    schemas: dict[str, Any],
) -> None:
    sqlite_events, pg_events = schemas["sqlite"][1], schemas["postgresql"][1]
    assert {(t, e) for t, e in pg_events if e != "TRUNCATE"} == sqlite_events
    deletes = {table for table, event in sqlite_events if event == "DELETE"}
    assert {table for table, event in pg_events if event == "TRUNCATE"} == deletes
    assert {"log_entries", "ledger_transfers", "ledger_postings"} <= deletes
