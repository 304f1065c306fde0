"""The coordinator's SQLite schema as numbered migrations; `user_version` says which have run."""

from __future__ import annotations

import sqlite3

MIGRATIONS: list[str] = [
    """
    CREATE TABLE providers (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        uscc TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL
    );
    CREATE TABLE enterprises (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        uscc TEXT NOT NULL UNIQUE,
        created_at_ms INTEGER NOT NULL
    );
    CREATE TABLE auditors (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL
    );
    CREATE TABLE tokens (
        token_hash TEXT PRIMARY KEY,
        role TEXT NOT NULL CHECK (role IN ('enterprise', 'auditor', 'enrolment')),
        subject_id TEXT NOT NULL,
        uses_left INTEGER,
        expires_at_ms INTEGER,
        revoked INTEGER NOT NULL DEFAULT 0,
        created_at_ms INTEGER NOT NULL
    );
    CREATE TABLE agents (
        agent_id TEXT PRIMARY KEY,
        provider_id TEXT NOT NULL REFERENCES providers(id),
        public_key BLOB NOT NULL,
        hostname TEXT NOT NULL,
        enrolled_at_ms INTEGER NOT NULL,
        ask_per_gpu_hour INTEGER,
        last_seen_ms INTEGER,
        penalty_ppm INTEGER NOT NULL DEFAULT 0,
        penalty_at_ms INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE gpus (
        uuid TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL REFERENCES agents(agent_id),
        model TEXT NOT NULL,
        memory_total_bytes INTEGER NOT NULL,
        first_seen_ms INTEGER NOT NULL
    );
    CREATE TABLE capacity_flags (
        id INTEGER PRIMARY KEY,
        agent_id TEXT NOT NULL,
        gpu_uuid TEXT,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        cleared_at_ms INTEGER
    );
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        enterprise_id TEXT NOT NULL REFERENCES enterprises(id),
        idempotency_key TEXT NOT NULL,
        spec TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        reason_detail TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        excluded_agents TEXT NOT NULL DEFAULT '[]',
        lease_id TEXT,
        created_at_ms INTEGER NOT NULL,
        ended_at_ms INTEGER,
        exit_code INTEGER,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        UNIQUE (enterprise_id, idempotency_key)
    );
    CREATE INDEX jobs_by_state ON jobs(state);
    CREATE TABLE leases (
        id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL REFERENCES jobs(id),
        agent_id TEXT NOT NULL REFERENCES agents(agent_id),
        gpu_uuids TEXT NOT NULL,
        price_per_gpu_hour INTEGER NOT NULL,
        created_at_ms INTEGER NOT NULL,
        start_deadline_ms INTEGER NOT NULL,
        ends_at_ms INTEGER NOT NULL,
        state TEXT NOT NULL,
        stop_reason TEXT,
        started_at_ms INTEGER,
        ended_at_ms INTEGER,
        exit_code INTEGER,
        end_reason TEXT
    );
    CREATE INDEX leases_by_agent ON leases(agent_id, state);
    CREATE TABLE auction_rounds (
        id INTEGER PRIMARY KEY,
        job_id TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        record BLOB NOT NULL
    );
    CREATE TABLE job_logs (
        job_id TEXT NOT NULL,
        offset INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (job_id, offset)
    );
    """,
    """
    CREATE TABLE receipts (
        lease_id TEXT NOT NULL REFERENCES leases(id),
        seq INTEGER NOT NULL,
        agent_id TEXT NOT NULL,
        envelope BLOB NOT NULL,
        digest BLOB NOT NULL UNIQUE,
        issued_at_ms INTEGER NOT NULL,
        accepted_at_ms INTEGER NOT NULL,
        gpu_ms INTEGER NOT NULL,
        amount INTEGER NOT NULL,
        delta INTEGER NOT NULL,
        final INTEGER NOT NULL,
        acknowledgement BLOB NOT NULL,
        PRIMARY KEY (lease_id, seq)
    );
    CREATE TABLE receipt_rejections (
        id INTEGER PRIMARY KEY,
        agent_id TEXT NOT NULL,
        lease_id TEXT,
        seq INTEGER,
        rule TEXT NOT NULL,
        detail TEXT NOT NULL,
        envelope BLOB NOT NULL,
        at_ms INTEGER NOT NULL
    );
    CREATE INDEX receipt_rejections_by_lease ON receipt_rejections(lease_id);
    """,
]


def migrate(conn: sqlite3.Connection) -> int:
    """Run the migrations this database has not seen, each in its own transaction."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise RuntimeError(
            f"database schema version {version} is newer than this coordinator knows "
            f"({len(MIGRATIONS)}); upgrade suanli"
        )
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
    return len(MIGRATIONS)
