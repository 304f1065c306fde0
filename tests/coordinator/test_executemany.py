"""A batch of rows written through the connection's executemany lands the same on both engines,
whichever way the engine sends it (on PostgreSQL a plain INSERT of many rows goes as a COPY),
and a batch with a bad row writes nothing of it."""

from __future__ import annotations

import sqlite3

import databases
import psycopg
import pytest
from databases import closed_after_the_test

from coordinator.storage import connect, transaction

INSERT = (
    "INSERT INTO receipt_rejections (agent_id, lease_id, seq, rule, detail, envelope, at_ms) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
READ = (
    "SELECT agent_id, lease_id, seq, rule, detail, envelope, at_ms FROM receipt_rejections "
    "ORDER BY at_ms"
)


def _row(n: int) -> tuple[object, ...]:
    # text that COPY must escape, bytes of every value, and NULLs
    return (
        f"agent\t{n}\\n",
        None if n % 2 else f"lease-{n}",
        None if n % 3 else n,
        "price",
        "a detail, with 'quotes' and a % sign",
        bytes(range(256)) * (n % 3),
        1_700_000_000_000 + n,
    )


@pytest.mark.parametrize("count", [0, 1, 2, 40])
def test_rows_read_back_as_written(database_location: str, count: int) -> None:
    db = closed_after_the_test(connect(database_location))
    written = [_row(n) for n in range(count)]
    with transaction(db):
        db.conn.executemany(INSERT, written)
    assert databases.rows(database_location, READ) == written


@pytest.mark.parametrize("count", [1, 40])
def test_a_bad_row_writes_none_of_the_batch(database_location: str, count: int) -> None:
    db = closed_after_the_test(connect(database_location))
    bad = [*(_row(n) for n in range(count)), (*_row(count)[:3], None, *_row(count)[4:])]
    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.NotNullViolation)) as refused:
        with transaction(db):
            db.conn.executemany(INSERT, bad)
    assert "rule" in str(refused.value)  # the column left empty is named
    assert databases.rows(database_location, READ) == []
