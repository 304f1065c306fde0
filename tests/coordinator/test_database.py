"""The coordinator's database: SQLite's migrations that rebuild a table and its checkpoints,
PostgreSQL's migrations taking turns, and on both engines the writer's grouped calls and the
storage interface each offers."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import databases
import pytest
from databases import ENGINES, shared_cluster

from coordinator.storage import Database, Session, Store, connect, postgres
from coordinator.storage.migrations import MIGRATIONS


def _database_at(path: Path, version: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    for number, script in enumerate(MIGRATIONS[:version], start=1):
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
    return conn


def test_receipts_acknowledged_one_by_one_keep_their_acknowledgements(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.db"
    old = _database_at(path, 4)
    old.execute("PRAGMA foreign_keys = ON")
    old.execute(
        "INSERT INTO providers (id, name, uscc, created_at_ms) VALUES ('prov-1', 'DC', 'U', 1)"
    )
    old.execute(
        "INSERT INTO enterprises (id, name, uscc, created_at_ms) VALUES ('ent-1', 'E', 'V', 1)"
    )
    old.execute(
        "INSERT INTO jobs (id, enterprise_id, idempotency_key, spec, state, created_at_ms) "
        "VALUES ('job-1', 'ent-1', 'k', '{}', 'running', 1)"
    )
    old.execute(
        "INSERT INTO agents (agent_id, provider_id, public_key, hostname, enrolled_at_ms) "
        "VALUES ('agent-1', 'prov-1', x'00', 'h', 1)"
    )
    old.execute(
        "INSERT INTO leases (id, job_id, agent_id, gpu_uuids, price_per_gpu_hour, created_at_ms, "
        "start_deadline_ms, ends_at_ms, state) "
        "VALUES ('lease-1', 'job-1', 'agent-1', '[]', 1, 1, 1, 1, 'running')"
    )
    for seq in (1, 2):
        old.execute(
            "INSERT INTO receipts (lease_id, seq, agent_id, envelope, digest, issued_at_ms, "
            "accepted_at_ms, gpu_ms, amount, delta, final, acknowledgement) "
            "VALUES ('lease-1', ?, 'agent-1', ?, ?, 1, 2, 0, 0, 0, 0, ?)",
            [seq, f"receipt {seq}".encode(), bytes([seq]) * 32, f"ack {seq}".encode()],
        )
    old.execute(
        "INSERT INTO ledger_accounts (id, ledger, kind, created_at_ms) VALUES "
        "('a', 'cny', 'bank', 1), ('b', 'cny', 'bank', 1)"
    )
    old.execute(
        "INSERT INTO ledger_transfers (id, kind, debit_account, credit_account, amount, code, "
        "cause, receipt_digest, at_ms) "
        "VALUES (?, 'posted', 'a', 'b', 5, 'usage_deferred', 'c', ?, 1)",
        [b"t" * 32, bytes([2]) * 32],
    )
    old.close()

    db = connect(path)  # migrates
    conn = db.conn
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    rows = conn.execute(
        "SELECT r.seq, r.envelope, a.envelope, a.agent_id, a.accepted_at_ms FROM receipts r "
        "JOIN receipt_acknowledgements a ON a.id = r.acknowledgement_id ORDER BY r.seq"
    ).fetchall()
    assert rows == [
        (1, b"receipt 1", b"ack 1", "agent-1", 2),
        (2, b"receipt 2", b"ack 2", "agent-1", 2),
    ]
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    # the ledger's reference to the rebuilt table still holds
    assert conn.execute(
        "SELECT r.seq FROM ledger_transfers t JOIN receipts r ON r.digest = t.receipt_digest"
    ).fetchall() == [(2,)]
    columns = {row[1] for row in conn.execute("PRAGMA table_info(receipts)")}
    assert "acknowledgement" not in columns and "acknowledgement_id" in columns
    db.conn.close()


def test_the_checkpointer_copies_the_log_into_the_file_and_close_empties_it(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.db"
    database = Database(path)
    database.start()
    # the writer's own connection never copies the log into the file: the checkpointer does
    assert database.db.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    before = path.stat().st_size

    async def write() -> None:
        for n in range(40):
            await database.run(
                lambda db, n=n: db.conn.execute(
                    "INSERT INTO auditors (id, name, created_at_ms) VALUES (?, ?, 1)",
                    [f"auditor-{n}", "x" * 50_000],
                )
            )

    asyncio.run(write())
    deadline = time.monotonic() + 10
    while path.stat().st_size < before + 40 * 50_000 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert path.stat().st_size >= before + 40 * 50_000
    database.close()
    wal = Path(f"{path}-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    reader = sqlite3.connect(path)
    assert reader.execute("SELECT COUNT(*) FROM auditors").fetchone()[0] == 40
    reader.close()


def test_grouped_calls_share_one_pass_and_a_bad_item_fails_only_itself(
    database_location: str,
) -> None:
    database = Database(database_location)
    calls: list[list[str]] = []

    def group(db: Any, names: list[str]) -> list[int]:
        calls.append(list(names))
        if "bad" in names:
            db.conn.execute(
                "INSERT INTO auditors (id, name, created_at_ms) VALUES ('half-done', 'x', 1)"
            )
            raise ValueError("bad item")
        return [
            db.conn.execute(
                "INSERT INTO auditors (id, name, created_at_ms) VALUES (?, ?, 1)", [name, name]
            ).rowcount
            for name in names
        ]

    async def burst() -> list[Any]:
        # queued before the writer starts, so it finds them all at once
        pending = [
            asyncio.ensure_future(database.run_grouped(group, name))
            for name in ("a", "b", "bad", "c")
        ]
        await asyncio.sleep(0)
        database.start()
        return await asyncio.gather(*pending, return_exceptions=True)

    results = asyncio.run(burst())
    database.close()
    assert calls[0] == ["a", "b", "bad", "c"]  # one pass for the whole burst
    assert calls[1:] == [["a"], ["b"], ["bad"], ["c"]]  # then each alone, after the failure
    assert isinstance(results[2], ValueError)
    assert results[:2] + results[3:] == [1, 1, 1]
    auditors = databases.rows(database_location, "SELECT id FROM auditors ORDER BY id")
    assert auditors == [("a",), ("b",), ("c",)]


def test_each_engine_offers_the_whole_storage_interface(database_location: str) -> None:
    """Every member the rooms above may use."""
    database = Database(database_location)
    for interface, engine in ((Store, database), (Session, database.db)):
        members = {name for name in vars(interface) if not name.startswith("_")}
        assert members and all(hasattr(engine, name) for name in members), interface.__name__
    assert hasattr(database.db.conn, "execute") and hasattr(database.db.conn, "executemany")
    database.close()


@pytest.mark.skipif("postgresql" not in ENGINES, reason="PostgreSQL is not among the engines")
def test_two_processes_migrating_one_postgresql_database_take_turns(tmp_path: Path) -> None:
    """Two coordinators starting at once on an empty database: one migrates, the other waits
    for the migration lock and then finds nothing left to do; neither fails."""
    import subprocess
    import sys

    url = shared_cluster().create_database()
    script = "import sys; from coordinator.storage import connect; connect(sys.argv[1])"
    holder = postgres.open_connection(url)
    holder.raw.execute("SELECT pg_advisory_lock(%s)", [postgres.MIGRATION_LOCK])
    starts = [
        subprocess.Popen([sys.executable, "-c", script, url], stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # both are queued behind the lock we hold
            waiting = holder.raw.execute(
                "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ).fetchone()
            if waiting is not None and waiting[0] == 2:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the two migrations never queued for the lock")
    finally:
        holder.raw.execute("SELECT pg_advisory_unlock(%s)", [postgres.MIGRATION_LOCK])
    for start in starts:
        _, errors = start.communicate(timeout=60)
        assert start.returncode == 0, errors.decode()
    assert postgres.schema_version(holder) == len(MIGRATIONS)
    assert databases.rows(url, "SELECT COUNT(*) FROM suanli_schema") == [(1,)]
    assert databases.rows(url, "SELECT size FROM log_meta") == [(0,)]
    holder.close()
