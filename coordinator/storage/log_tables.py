"""The transparency log's tables (coordinator.tlog) in SQLite's dialect: migration 4, kept apart
because the tests apply it again to a database that has them, to restore the triggers they
dropped (hence the IF NOT EXISTS and the INSERT OR IGNORE)."""

from __future__ import annotations

LOG_TABLES = """
CREATE TABLE IF NOT EXISTS log_entries (
    idx INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS log_hashes (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log_meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    size INTEGER NOT NULL
);
INSERT OR IGNORE INTO log_meta (id, size) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS log_checkpoints (
    size INTEGER PRIMARY KEY,
    note TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS log_lookup (
    kind TEXT NOT NULL,
    key BLOB NOT NULL,
    idx INTEGER NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS log_entries_no_update BEFORE UPDATE ON log_entries BEGIN
    SELECT RAISE(ABORT, 'log entries are append-only');
END;
CREATE TRIGGER IF NOT EXISTS log_entries_no_delete BEFORE DELETE ON log_entries BEGIN
    SELECT RAISE(ABORT, 'log entries are append-only');
END;
"""
