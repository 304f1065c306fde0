"""The agent's durable state: leases it runs, their metering, and signed receipts to deliver.

A receipt is written here before it is sent and leaves only when the coordinator
acknowledges it, so a crash, a restart or an outage loses nothing: on start the agent
re-sends what is pending, in order, and continues each lease's chain where it stopped.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.lease import LeaseRecord
from agent.spool_rows import energy_json, lease_from_row, lease_row

PULLING_PREFIX = "pulling:"  # a private_images row marking a credentialed pull under way

SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    lease_id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    gpu_uuids TEXT NOT NULL,
    price_per_gpu_hour INTEGER NOT NULL,
    lease TEXT NOT NULL,
    container_id TEXT,
    started_at_ms INTEGER,
    ended_at_ms INTEGER,
    exit_code INTEGER,
    energy_base TEXT NOT NULL DEFAULT '{}',
    energy_mj INTEGER NOT NULL DEFAULT 0,
    util_sum INTEGER NOT NULL DEFAULT 0,
    util_samples INTEGER NOT NULL DEFAULT 0,
    peak_memory_bytes INTEGER NOT NULL DEFAULT 0,
    last_seq INTEGER NOT NULL DEFAULT 0,
    last_digest BLOB,
    last_gpu_ms INTEGER NOT NULL DEFAULT 0,
    last_issued_at_ms INTEGER NOT NULL DEFAULT 0,
    final_sealed INTEGER NOT NULL DEFAULT 0,
    accepted_seq INTEGER NOT NULL DEFAULT 0,
    log_offset INTEGER NOT NULL DEFAULT 0,
    status_reported TEXT NOT NULL DEFAULT '',
    done INTEGER NOT NULL DEFAULT 0,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS receipts (
    lease_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    envelope BLOB NOT NULL,
    digest BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL,
    acked_at_ms INTEGER,
    acknowledgement BLOB,  -- SHA-256 of its row in acknowledgements
    rejected_rule TEXT,
    rejected_detail TEXT,
    PRIMARY KEY (lease_id, seq)
);
CREATE TABLE IF NOT EXISTS acknowledgements (
    digest BLOB PRIMARY KEY,
    envelope BLOB NOT NULL
);
-- images pulled with a lease's credentials, by content ID; lease_id '' marks one whose
-- leases have all ended and which is still to be removed
CREATE TABLE IF NOT EXISTS private_images (
    image_id TEXT NOT NULL,
    lease_id TEXT NOT NULL,
    PRIMARY KEY (image_id, lease_id)
);
"""


@dataclass
class SpooledReceipt:
    lease_id: str
    seq: int
    envelope: bytes
    digest: bytes
    created_at_ms: int
    acked_at_ms: int | None
    rejected_rule: str | None


class Spool:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = FULL")
        self._conn.executescript(SCHEMA)
        self.path.chmod(0o600)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            self._conn.row_factory = sqlite3.Row
            return list(self._conn.execute(sql, params))

    # -- leases -------------------------------------------------------------------------

    def save_lease(self, record: LeaseRecord) -> None:
        values = lease_row(record)
        columns = ", ".join(values)
        marks = ", ".join(f":{name}" for name in values)
        with self._lock:
            self._conn.execute(
                f"INSERT OR REPLACE INTO leases ({columns}) VALUES ({marks})", values
            )

    def leases(self, include_done: bool = False) -> list[LeaseRecord]:
        rows = self._rows(
            "SELECT * FROM leases"
            + ("" if include_done else " WHERE done = 0")
            + " ORDER BY created_at_ms"
        )
        return [lease_from_row(dict(row)) for row in rows]

    # -- receipts -----------------------------------------------------------------------

    def add_receipt(
        self, record: LeaseRecord, seq: int, envelope: bytes, digest: bytes, now_ms: int
    ) -> None:
        """Store a sealed receipt and the lease's advanced chain in one transaction."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "INSERT INTO receipts (lease_id, seq, envelope, digest, created_at_ms) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (record.lease_id, seq, envelope, digest, now_ms),
                )
                self._conn.execute(
                    "UPDATE leases SET last_seq = ?, last_digest = ?, final_sealed = ?, "
                    "last_gpu_ms = ?, last_issued_at_ms = ?, energy_mj = ?, energy_base = ? "
                    "WHERE lease_id = ?",
                    (
                        seq,
                        digest,
                        int(record.chain.final_sealed),
                        record.chain.last_gpu_ms,
                        record.chain.last_issued_at_ms,
                        record.metering.energy_mj,
                        energy_json(record.metering),
                        record.lease_id,
                    ),
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def pending_receipts(self, limit: int = 100) -> list[SpooledReceipt]:
        rows = self._rows(
            "SELECT lease_id, seq, envelope, digest, created_at_ms, acked_at_ms, rejected_rule "
            "FROM receipts WHERE acked_at_ms IS NULL AND rejected_rule IS NULL "
            "ORDER BY created_at_ms, lease_id, seq LIMIT ?",
            (limit,),
        )
        return [SpooledReceipt(**dict(row)) for row in rows]

    def unanswered(self, lease_id: str) -> int:
        """How many of the lease's receipts the coordinator has neither accepted nor refused."""
        with self._lock:
            return int(
                self._conn.execute(
                    "SELECT COUNT(*) FROM receipts WHERE lease_id = ? AND acked_at_ms IS NULL "
                    "AND rejected_rule IS NULL",
                    (lease_id,),
                ).fetchone()[0]
            )

    def receipts(self, lease_id: str | None = None) -> list[SpooledReceipt]:
        where, params = ("WHERE lease_id = ?", (lease_id,)) if lease_id else ("", ())
        rows = self._rows(
            "SELECT lease_id, seq, envelope, digest, created_at_ms, acked_at_ms, rejected_rule "
            f"FROM receipts {where} ORDER BY lease_id, seq",
            params,
        )
        return [SpooledReceipt(**dict(row)) for row in rows]

    def acknowledge(self, lease_id: str, seq: int, acknowledgement: bytes, now_ms: int) -> None:
        """Mark the receipt accepted; the acknowledgement (one per batch) is kept once, and the
        receipt names it by its SHA-256."""
        digest = hashlib.sha256(acknowledgement).digest()
        with self._lock:
            self._conn.execute(
                "INSERT OR IGNORE INTO acknowledgements (digest, envelope) VALUES (?, ?)",
                (digest, acknowledgement),
            )
            self._conn.execute(
                "UPDATE receipts SET acked_at_ms = ?, acknowledgement = ? "
                "WHERE lease_id = ? AND seq = ?",
                (now_ms, digest, lease_id, seq),
            )
            self._conn.execute(
                "UPDATE leases SET accepted_seq = MAX(accepted_seq, ?) WHERE lease_id = ?",
                (seq, lease_id),
            )

    def reject(self, lease_id: str, seq: int, rule: str, detail: str) -> None:
        """A rejected receipt is kept, with the rule it broke, never dropped."""
        with self._lock:
            self._conn.execute(
                "UPDATE receipts SET rejected_rule = ?, rejected_detail = ? "
                "WHERE lease_id = ? AND seq = ?",
                (rule, detail, lease_id, seq),
            )

    # -- private images -----------------------------------------------------------------

    def hold_private_image(self, image_id: str, lease_id: str) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR IGNORE INTO private_images (image_id, lease_id) VALUES (?, ?)",
                (image_id, lease_id),
            )

    def private_image_ids(self) -> set[str]:
        rows = self._rows("SELECT image_id FROM private_images WHERE image_id NOT LIKE 'pulling:%'")
        return {row["image_id"] for row in rows}

    def private_image_holders(self, image_id: str) -> set[str]:
        """The leases holding an image ('' for one waiting to be removed)."""
        rows = self._rows("SELECT lease_id FROM private_images WHERE image_id = ?", (image_id,))
        return {row["lease_id"] for row in rows}

    def mark_pulling(self, lease_id: str) -> bool:
        """Mark a credentialed pull under way; True if an earlier one was interrupted."""
        with self._lock:
            cursor = self._conn.execute(
                "INSERT OR IGNORE INTO private_images (image_id, lease_id) VALUES (?, ?)",
                (PULLING_PREFIX + lease_id, lease_id),
            )
            return cursor.rowcount == 0

    def unmark_pulling(self, lease_id: str) -> None:
        with self._lock:
            self._conn.execute(
                "DELETE FROM private_images WHERE image_id = ?", (PULLING_PREFIX + lease_id,)
            )

    def release_private_images(self, lease_id: str) -> tuple[set[str], set[str]]:
        """Drop a lease's holds; (the images now to be removed, the images still held)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute(
                "INSERT OR IGNORE INTO private_images (image_id, lease_id) "
                "SELECT image_id, '' FROM private_images WHERE lease_id = ? "
                "AND image_id NOT LIKE 'pulling:%' AND image_id NOT IN "
                "(SELECT image_id FROM private_images WHERE lease_id NOT IN (?, ''))",
                (lease_id, lease_id),
            )
            self._conn.execute("DELETE FROM private_images WHERE lease_id = ?", (lease_id,))
            self._conn.execute("COMMIT")
            rows = list(self._conn.execute("SELECT image_id, lease_id FROM private_images"))
        to_remove = {image_id for image_id, holder in rows if holder == ""}
        return to_remove, {image_id for image_id, holder in rows if holder != ""}

    def forget_private_image(self, image_id: str) -> None:
        with self._lock:
            self._conn.execute(
                "DELETE FROM private_images WHERE image_id = ? AND lease_id = ''", (image_id,)
            )
