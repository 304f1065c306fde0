"""The log's entries and its Merkle tree in the database: appends, and lookups by key.

Entries are `shared.log_entries` bytes. `append_entries` stores them, their lookup keys and the
tree's perfect-subtree hashes in the caller's transaction, so a receipt, its postings and its
leaf commit together. Every function here runs inside a transaction of the store (the writer's,
or an admin command's) and never begins or commits one itself.
"""

from __future__ import annotations

from coordinator.storage import Connection, Session
from shared import log_entries
from shared.merkle import MerkleTree


class LogHashStore:
    """shared.merkle's HashStore in the log_hashes and log_meta tables.

    Hashes and the size are written in one savepoint (`append_entries`), so no hash outlives
    an interrupted append and each is inserted once: a plain INSERT, which PostgreSQL takes as
    one COPY, and a key already held is refused rather than overwritten.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def get(self, level: int, index: int) -> bytes:
        row = self._conn.execute(
            "SELECT hash FROM log_hashes WHERE level = ? AND idx = ?", [level, index]
        ).fetchone()
        if row is None:
            raise KeyError((level, index))
        return bytes(row[0])

    def put_many(self, items: list[tuple[int, int, bytes]]) -> None:
        self._conn.executemany("INSERT INTO log_hashes (level, idx, hash) VALUES (?, ?, ?)", items)

    def size(self) -> int:
        row = self._conn.execute("SELECT size FROM log_meta WHERE id = 1").fetchone()
        return int(row[0]) if row is not None else 0

    def set_size(self, size: int) -> None:
        self._conn.execute(
            "INSERT INTO log_meta (id, size) VALUES (1, ?) "
            "ON CONFLICT (id) DO UPDATE SET size = excluded.size",
            [size],
        )


def tree(db: Session) -> MerkleTree:
    """The log's tree as stored now; read afresh each time, so a rolled-back append leaves no
    trace in memory."""
    return MerkleTree(LogHashStore(db.conn))


def size(db: Session) -> int:
    return LogHashStore(db.conn).size()


def append_entries(
    db: Session, entries: list[bytes], decoded: list[log_entries.Entry] | None = None
) -> int:
    """Append encoded entries in order; returns the index of the first.

    Every entry is decoded first, so a malformed one appends nothing (LogEntryError); a
    caller already holding each decoded entry (`log_entries.encode_receipt_entry`) passes it as
    `decoded`.
    The entries, their lookup keys and the tree's hashes are written in one savepoint.
    """
    if decoded is None:
        decoded = [log_entries.decode_entry(data) for data in entries]
    elif len(decoded) != len(entries):
        raise ValueError("one decoded entry per entry")
    conn = db.conn
    conn.execute("SAVEPOINT tlog_append")
    try:
        log_tree = MerkleTree(LogHashStore(conn))
        first = log_tree.size
        conn.executemany(
            "INSERT INTO log_entries (idx, kind, at_ms, data) VALUES (?, ?, ?, ?)",
            [
                (first + n, entry.kind, entry.at_ms, data)
                for n, (entry, data) in enumerate(zip(decoded, entries, strict=True))
            ],
        )
        conn.executemany(
            "INSERT INTO log_lookup (kind, key, idx) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            [
                (entry.kind, key, first + n)
                for n, entry in enumerate(decoded)
                if (key := lookup_key(entry)) is not None
            ],
        )
        log_tree.append_many(entries)
    except BaseException:
        conn.execute("ROLLBACK TO tlog_append")
        conn.execute("RELEASE tlog_append")
        raise
    conn.execute("RELEASE tlog_append")
    return first


def lookup_key(entry: log_entries.Entry) -> bytes | None:
    """What `find` names an entry by: a receipt's digest, an agent's id, an enterprise's id,
    a payment's reference, a period, a log key rotation's digest; None for the other kinds."""
    if isinstance(entry.body, log_entries.ReceiptEntry):
        return entry.body.digest
    if isinstance(entry.body, log_entries.AgentKey):
        return bytes.fromhex(entry.body.agent_id)
    if isinstance(entry.body, log_entries.EnterpriseEntry):
        return entry.body.enterprise_id.encode()
    if isinstance(entry.body, log_entries.PaymentEntry):
        return entry.body.reference.encode()
    if isinstance(entry.body, log_entries.PeriodCloseEntry):
        return entry.body.period.encode()
    if isinstance(entry.body, log_entries.LogKeyEntry):
        return entry.body.digest  # so that /v1/log/key-changes lists them without a scan
    return None


def find(db: Session, kind: str, key: bytes) -> int | None:
    """The index of the (first) entry of this kind with this lookup key."""
    row = db.conn.execute(
        "SELECT idx FROM log_lookup WHERE kind = ? AND key = ?", [kind, key]
    ).fetchone()
    return int(row[0]) if row is not None else None


def find_receipt(db: Session, digest: bytes) -> int | None:
    """The index of the (first) receipt entry whose envelope has this SHA-256."""
    return find(db, log_entries.RECEIPT, digest)


def find_agent_key(db: Session, agent_id: bytes) -> int | None:
    """The index of the (first) agent_key entry of this agent (its key id, 32 bytes)."""
    return find(db, log_entries.AGENT_KEY, agent_id)
