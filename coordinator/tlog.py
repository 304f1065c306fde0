"""The transparency log: an append-only RFC 9162 Merkle tree of log entries kept in SQLite, its
C2SP checkpoints signed with the coordinator's key, and the public HTTP API auditors read.

Entries are `shared.log_entries` bytes. `append_entries` stores them and the tree's perfect-subtree
hashes in the caller's transaction, so a receipt, its postings and its leaf commit together.
Every function that takes `db` is synchronous and runs on the writer thread (`Database.run`) or
inside an admin command's transaction; none begins or commits a transaction itself.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlite_utils
from aiohttp import web

from coordinator.errors import ApiError, NotFound, Unprocessable
from shared import log_entries
from shared.checkpoint import Checkpoint, open_checkpoint
from shared.checkpoint import sign_checkpoint as sign_checkpoint_note
from shared.clock import now_ms
from shared.errors import SuanliError
from shared.identity import PrivateKey, PublicKey, load_private_key, save_private_key, verifier_key
from shared.merkle import MerkleTree

if TYPE_CHECKING:  # coordinator.schema imports LOG_SCHEMA from here, and coordinator.db imports it
    from coordinator.db import Database

log = logging.getLogger(__name__)

MAX_PAGE = 1000
# base64 makes a page a third larger again; an entry larger than this still comes alone
MAX_PAGE_BYTES = 8 << 20
DEFAULT_CHECKPOINT_INTERVAL_S = 2.0
_MAX_QUERY_DIGITS = 19

# Appended to coordinator/schema.py MIGRATIONS, so never edit it: change the log's tables with a
# new migration. It may also run on a database that already has it (the tests apply it so).
LOG_SCHEMA = """
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


def _conn(db: sqlite_utils.Database | sqlite3.Connection) -> sqlite3.Connection:
    return db.conn if isinstance(db, sqlite_utils.Database) else db


# -- the tree ----------------------------------------------------------------------------------


class SqliteHashStore:
    """shared.merkle's HashStore in the log_hashes and log_meta tables."""

    def __init__(self, db: sqlite_utils.Database | sqlite3.Connection) -> None:
        self._conn = _conn(db)

    def get(self, level: int, index: int) -> bytes:
        row = self._conn.execute(
            "SELECT hash FROM log_hashes WHERE level = ? AND idx = ?", [level, index]
        ).fetchone()
        if row is None:
            raise KeyError((level, index))
        return bytes(row[0])

    def put_many(self, items: list[tuple[int, int, bytes]]) -> None:
        self._conn.executemany(
            "INSERT OR REPLACE INTO log_hashes (level, idx, hash) VALUES (?, ?, ?)", items
        )

    def size(self) -> int:
        row = self._conn.execute("SELECT size FROM log_meta WHERE id = 1").fetchone()
        return int(row[0]) if row is not None else 0

    def set_size(self, size: int) -> None:
        self._conn.execute(
            "INSERT INTO log_meta (id, size) VALUES (1, ?) "
            "ON CONFLICT (id) DO UPDATE SET size = excluded.size",
            [size],
        )


def tree(db: sqlite_utils.Database | sqlite3.Connection) -> MerkleTree:
    """The log's tree as stored now; read afresh each time, so a rolled-back append leaves no
    trace in memory."""
    return MerkleTree(SqliteHashStore(db))


def size(db: sqlite_utils.Database | sqlite3.Connection) -> int:
    return SqliteHashStore(db).size()


def append_entries(
    db: sqlite_utils.Database | sqlite3.Connection,
    entries: list[bytes],
    decoded: list[log_entries.Entry] | None = None,
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
    conn = _conn(db)
    conn.execute("SAVEPOINT tlog_append")
    try:
        log_tree = tree(conn)
        first = log_tree.size
        conn.executemany(
            "INSERT INTO log_entries (idx, kind, at_ms, data) VALUES (?, ?, ?, ?)",
            [
                (first + n, entry.kind, entry.at_ms, data)
                for n, (entry, data) in enumerate(zip(decoded, entries, strict=True))
            ],
        )
        conn.executemany(
            "INSERT OR IGNORE INTO log_lookup (kind, key, idx) VALUES (?, ?, ?)",
            [
                (entry.kind, key, first + n)
                for n, entry in enumerate(decoded)
                if (key := _lookup_key(entry)) is not None
            ],
        )
        log_tree.append_many(entries)
    except BaseException:
        conn.execute("ROLLBACK TO tlog_append")
        conn.execute("RELEASE tlog_append")
        raise
    conn.execute("RELEASE tlog_append")
    return first


def entries(db: sqlite_utils.Database | sqlite3.Connection, start: int, end: int) -> list[bytes]:
    """The entries [start, end), at most MAX_PAGE of them and about MAX_PAGE_BYTES (at least one).

    Raises Unprocessable for an empty or inverted range and NotFound past the end of the log.
    """
    current = size(db)
    _need_range(0 <= start < end, f"start must be below end, not {start} and {end}")
    _need_within(end, current, "end")
    end = min(end, start + MAX_PAGE)
    page: list[bytes] = []
    total = 0
    rows = _conn(db).execute(
        "SELECT idx, data FROM log_entries WHERE idx >= ? AND idx < ? ORDER BY idx", [start, end]
    )
    for idx, data in rows:
        if idx != start + len(page):
            break
        if page and total + len(data) > MAX_PAGE_BYTES:
            return page
        page.append(bytes(data))
        total += len(data)
    if len(page) < end - start:
        raise RuntimeError(f"log entry {start + len(page)} is missing from the database")
    return page


def inclusion(
    db: sqlite_utils.Database | sqlite3.Connection, index: int, tree_size: int
) -> list[bytes]:
    """Audit path of entry `index` in the tree of the first `tree_size` entries."""
    log_tree = tree(db)
    _need_within(tree_size, log_tree.size, "size")
    _need_range(
        0 <= index < tree_size, f"index {index} is not an entry of a tree of {tree_size} entries"
    )
    return log_tree.inclusion_proof(index, tree_size)


def consistency(db: sqlite_utils.Database | sqlite3.Connection, old: int, new: int) -> list[bytes]:
    """Proof that the tree of `old` entries is a prefix of the tree of `new` entries."""
    log_tree = tree(db)
    _need_within(new, log_tree.size, "new")
    _need_range(0 < old <= new, f"a consistency proof needs 0 < old <= new, not {old} and {new}")
    return log_tree.consistency_proof(old, new)


def _lookup_key(entry: log_entries.Entry) -> bytes | None:
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


def append_unless_logged(
    db: sqlite_utils.Database | sqlite3.Connection, entry: bytes
) -> int | None:
    """Append an entry unless one of its kind with the same key (agent, enterprise, receipt
    digest, payment reference, period) is logged already, so that an idempotent command
    retried logs once; returns the new entry's index, or None when it was logged before."""
    decoded = log_entries.decode_entry(entry)
    key = _lookup_key(decoded)
    if key is not None and _find(db, decoded.kind, key) is not None:
        return None
    return append_entries(db, [entry])


def find_receipt(db: sqlite_utils.Database | sqlite3.Connection, digest: bytes) -> int | None:
    """The index of the (first) receipt entry whose envelope has this SHA-256."""
    return _find(db, log_entries.RECEIPT, digest)


def find_agent_key(db: sqlite_utils.Database | sqlite3.Connection, agent_id: bytes) -> int | None:
    """The index of the (first) agent_key entry of this agent (its key id, 32 bytes)."""
    return _find(db, log_entries.AGENT_KEY, agent_id)


def log_registrations(db: sqlite_utils.Database | sqlite3.Connection) -> int:
    """Append agent_key and enterprise entries for the agents and enterprises the log does not
    hold yet (those registered before the log existed, or by a path that did not log them), in
    the order they registered; returns how many were appended. Run at start-up."""
    conn = _conn(db)
    logged = {
        (kind, bytes(key))
        for kind, key in conn.execute(
            "SELECT kind, key FROM log_lookup WHERE kind IN (?, ?)",
            [log_entries.AGENT_KEY, log_entries.ENTERPRISE],
        )
    }
    found: list[tuple[int, bytes]] = []
    for agent_id, public_key, provider_id, uscc, at_ms in conn.execute(
        "SELECT a.agent_id, a.public_key, a.provider_id, p.uscc, a.enrolled_at_ms "
        "FROM agents a JOIN providers p ON p.id = a.provider_id"
    ):
        if (log_entries.AGENT_KEY, bytes.fromhex(agent_id)) not in logged:
            body = log_entries.AgentKey(agent_id, bytes(public_key), provider_id, uscc)
            found.append((at_ms, log_entries.encode_entry(log_entries.AGENT_KEY, at_ms, body)))
    for enterprise_id, uscc, at_ms in conn.execute(
        "SELECT id, uscc, created_at_ms FROM enterprises"
    ):
        if (log_entries.ENTERPRISE, enterprise_id.encode()) not in logged:
            found.append(
                (
                    at_ms,
                    log_entries.encode_entry(
                        log_entries.ENTERPRISE,
                        at_ms,
                        log_entries.EnterpriseEntry(enterprise_id, uscc),
                    ),
                )
            )
    found.sort(key=lambda item: item[0])
    if found:
        append_entries(conn, [data for _, data in found])
    return len(found)


def log_voucher_policy(
    db: sqlite_utils.Database | sqlite3.Connection, policy: dict[str, Any], now_ms: int
) -> bool:
    """Append the voucher policy (its settings by name) unless the last one logged is the same;
    returns whether it was appended. Run at start-up, after the policy is loaded."""
    conn = _conn(db)
    row = conn.execute(
        "SELECT data FROM log_entries WHERE kind = ? ORDER BY idx DESC LIMIT 1",
        [log_entries.VOUCHER_POLICY],
    ).fetchone()
    if row is not None and log_entries.decode_entry(bytes(row[0])).body == policy:
        return False
    append_entries(conn, [log_entries.encode_entry(log_entries.VOUCHER_POLICY, now_ms, policy)])
    return True


def _find(db: sqlite_utils.Database | sqlite3.Connection, kind: str, key: bytes) -> int | None:
    row = (
        _conn(db)
        .execute("SELECT idx FROM log_lookup WHERE kind = ? AND key = ?", [kind, key])
        .fetchone()
    )
    return int(row[0]) if row is not None else None


def _need_range(ok: bool, detail: str) -> None:
    if not ok:
        raise Unprocessable(detail)


def _need_within(value: int, current: int, name: str) -> None:
    if value > current:
        raise NotFound(f"{name} {value} is beyond the log, which has {current} entries")


# -- checkpoints -------------------------------------------------------------------------------


def default_origin(key: PrivateKey) -> str:
    """The log's name in its checkpoints: stable for a key, different for another key."""
    return f"suanli.coordinator/{key.public.key_id.hex()[:16]}"


def verifier_key_text(key: PrivateKey, origin: str) -> str:
    """The C2SP verifier key auditors pin: `origin+keyhash+base64(0x01 || public key)`."""
    return str(verifier_key(origin, key.public))


def latest_checkpoint(db: sqlite_utils.Database | sqlite3.Connection) -> str | None:
    """The signed note of the largest tree signed so far, or None before the first."""
    row = (
        _conn(db).execute("SELECT note FROM log_checkpoints ORDER BY size DESC LIMIT 1").fetchone()
    )
    return str(row[0]) if row is not None else None


def sign_checkpoint(
    db: sqlite_utils.Database | sqlite3.Connection,
    key: PrivateKey | LogKey,
    origin: str | None,
    now_ms: int,
) -> str:
    """Sign (and store) a checkpoint of the log as it is now; returns the signed note.

    Given a LogKey, the key and origin in force now (after any rotation) sign it.
    When the latest stored checkpoint already covers the current size and was signed by this
    key for this origin, it is returned as it is: an idle log is not re-signed.
    """
    conn = _conn(db)
    if isinstance(key, LogKey):
        log_key = key
        log_key.refresh(conn)
        key, origin = log_key.key, log_key.origin
    origin = origin or default_origin(key)
    log_tree = tree(conn)
    row = conn.execute(
        "SELECT size, note FROM log_checkpoints ORDER BY size DESC LIMIT 1"
    ).fetchone()
    if row is not None:
        if row[0] > log_tree.size:
            raise RuntimeError(
                f"the log has {log_tree.size} entries but a checkpoint of {row[0]} "
                "was signed; the database lost entries"
            )
        if row[0] == log_tree.size and _signed_by(row[1], key, origin):
            return str(row[1])
    note = sign_checkpoint_note(Checkpoint(origin, log_tree.size, log_tree.root()), origin, key)
    conn.execute(
        "INSERT OR REPLACE INTO log_checkpoints (size, note, at_ms) VALUES (?, ?, ?)",
        [log_tree.size, note, now_ms],
    )
    return note


def _signed_by(note: str, key: PrivateKey, origin: str) -> bool:
    try:
        open_checkpoint(note, verifier_key(origin, key.public), origin)
    except SuanliError:
        return False
    return True


async def checkpoint_loop(
    database: Database,
    key: PrivateKey | LogKey,
    origin: str | None,
    interval_s: float,
    clock: Callable[[], int] = now_ms,
) -> None:
    """Sign a checkpoint every `interval_s` while the log grows (an idle log is not re-signed)."""
    while True:
        try:
            await database.run(lambda db: sign_checkpoint(db, key, origin, clock()))
        except Exception:
            log.exception("signing a log checkpoint failed")
        await asyncio.sleep(interval_s)


# -- the log key and its rotations ------------------------------------------------------------


def log_key_changes(db: sqlite_utils.Database | sqlite3.Connection) -> list[int]:
    """The indices of the log_key entries, in log order."""
    rows = (
        _conn(db)
        .execute("SELECT idx FROM log_lookup WHERE kind = ? ORDER BY idx", [log_entries.LOG_KEY])
        .fetchall()
    )
    return [int(idx) for (idx,) in rows]


def _last_change_index(conn: sqlite3.Connection) -> int | None:
    row = conn.execute(
        "SELECT MAX(idx) FROM log_lookup WHERE kind = ?", [log_entries.LOG_KEY]
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def _change_at(conn: sqlite3.Connection, index: int) -> log_entries.LogKeyChange:
    row = conn.execute("SELECT data FROM log_entries WHERE idx = ?", [index]).fetchone()
    body = log_entries.decode_entry(bytes(row[0])).body
    assert isinstance(body, log_entries.LogKeyEntry)
    return log_entries.read_log_key(body.envelope)


class LogKeyMissing(SuanliError):
    """The log says its key rotated to a key that no key file beside the database holds."""

    code = "log_key_missing"


def pending_key_path(key_path: Path, key: PublicKey) -> Path:
    """Where a rotation writes the new key before the log names it (then moves it to key_path):
    named by its key id, so the log's entry says where to find it and rotations never collide."""
    return key_path.with_name(f"{key_path.name}.{key.key_id.hex()[:16]}.next")


def archived_key_path(key_path: Path, key: PublicKey) -> Path:
    """Where a rotated-out key is kept, named by its key id: never deleted."""
    return key_path.with_name(f"{key_path.name}.{key.key_id.hex()[:16]}.retired")


def _find_key(key_path: Path, public: bytes) -> PrivateKey:
    # the new key is moved from its pending file after its entry commits: look there first,
    # so that a move between the two reads cannot hide it
    for path in (pending_key_path(key_path, PublicKey(public)), key_path):
        with contextlib.suppress(SuanliError):
            key = load_private_key(path)
            if key.public.raw == public:
                return key
    raise LogKeyMissing(
        f"the log's key rotated to {PublicKey(public).key_id.hex()[:16]}, but no "
        f"key file beside the database holds it ({key_path})"
    )


@dataclass
class LogKey:
    """The key the log signs with now, and the log's name: what the database's last log_key
    entry says, refreshed in every transaction that signs, so that a rotation made by another
    process (`admin rotate-log-key`) takes effect at the very next checkpoint or acknowledgement
    and nothing after the rotation's entry is signed with the old key. Refreshed on the writer
    thread only (`refresh` runs inside its transactions)."""

    key: PrivateKey
    origin: str
    key_path: Path | None = None
    _seen: int = -1

    @classmethod
    def load(cls, db: sqlite_utils.Database | sqlite3.Connection, key_path: Path) -> LogKey:
        """The key in force for the log in `db`: key_path (created for a log that never
        rotated), or the key its last rotation names, wherever beside it that rotation left it.
        Raises LogKeyMissing rather than sign with a key the log does not name."""
        conn = _conn(db)
        index = _last_change_index(conn)
        if index is None:
            if not key_path.exists():
                save_private_key(key_path, PrivateKey.generate())
            key = load_private_key(key_path)
            return cls(key, default_origin(key), key_path)
        change = _change_at(conn, index)
        return cls(_find_key(key_path, change.new_key), change.origin, key_path, index)

    def refresh(self, db: sqlite_utils.Database | sqlite3.Connection) -> PrivateKey:
        """Follow the log's last rotation, if it is newer than the one seen; returns the key."""
        conn = _conn(db)
        index = _last_change_index(conn)  # one indexed read in each signing transaction
        if index is None or index == self._seen:
            return self.key
        change = _change_at(conn, index)
        if change.new_key != self.key.public.raw:
            if self.key_path is None:
                raise LogKeyMissing("the log's key rotated, and this log has no key file to follow")
            self.key = _find_key(self.key_path, change.new_key)
        self.origin, self._seen = change.origin, index
        log.info("the log key is now %s (rotated at entry %d)", self.verifier_key, index)
        return self.key

    @property
    def verifier_key(self) -> str:
        return verifier_key_text(self.key, self.origin)


def rotate_log_key(db: sqlite_utils.Database, key_path: Path, now_ms: int) -> dict[str, Any]:
    """Make a new log key and log the old key's signature over it; keep the old key.

    The new key is written (0600) before the log_key entry commits, and the old one is archived
    beside the database; a running server switches to the new key in the first transaction that
    signs after the entry. Run inside no transaction: this one commits its own.
    """
    from coordinator.db import transaction  # coordinator.db imports this module

    current = LogKey.load(db, key_path)
    old = current.key
    new = PrivateKey.generate()
    pending = pending_key_path(key_path, new.public)
    save_private_key(pending, new)
    archive = archived_key_path(key_path, old.public)
    if not archive.exists():
        save_private_key(archive, old)
    try:
        with transaction(db):
            if current.refresh(db) is not old:
                raise SuanliError("the log key rotated while this rotation ran; run it again")
            entry = log_entries.encode_entry(
                log_entries.LOG_KEY,
                now_ms,
                log_entries.LogKeyEntry(log_entries.seal_log_key(current.origin, new.public, old)),
            )
            index = append_entries(db, [entry])
            sign_checkpoint(db, new, current.origin, now_ms)  # the new key's first checkpoint
    except BaseException:
        pending.unlink(missing_ok=True)  # never named by the log: nothing may sign with it
        raise
    os.replace(pending, key_path)
    return {
        "log_index": index,
        "origin": current.origin,
        "old_log_key": verifier_key_text(old, current.origin),
        "new_log_key": verifier_key_text(new, current.origin),
        "archived_key": str(archive),
        "at_ms": now_ms,
    }


# -- HTTP --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransparencyLog:
    """What the log's handlers need: the writer, the log key (a LogKey follows rotations) and
    the log's name (a LogKey's own when it is one)."""

    database: Database
    key: PrivateKey | LogKey
    origin: str | None = None
    checkpoint_interval_s: float = DEFAULT_CHECKPOINT_INTERVAL_S
    clock: Callable[[], int] = now_ms

    @property
    def log_key(self) -> LogKey:
        if isinstance(self.key, LogKey):
            return self.key
        return LogKey(self.key, self.origin or default_origin(self.key))

    @property
    def verifier_key(self) -> str:
        return self.log_key.verifier_key


TLOG = web.AppKey("tlog", TransparencyLog)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _public(handler: Handler) -> Handler:
    """Render refusals here, in the API's one error shape, so the log's routes behave alike in
    the coordinator's app and in any app that mounts them."""

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return web.json_response(exc.as_body(), status=exc.status)
        except SuanliError as exc:
            return web.json_response(exc.as_body(), status=422)

    handle.__name__ = handler.__name__
    handle.__doc__ = handler.__doc__
    return handle


def _query_int(request: web.Request, name: str, default: int | None = None) -> int:
    raw = request.query.get(name)
    if raw is None:
        if default is not None:
            return default
        raise ApiError(f"query parameter {name} is required", code="missing_parameter")
    if not raw.isascii() or not raw.isdigit() or len(raw) > _MAX_QUERY_DIGITS:
        raise ApiError(
            f"query parameter {name} must be a whole number of at most "
            f"{_MAX_QUERY_DIGITS} digits, not {raw[:40]!r}",
            code="bad_parameter",
        )
    return int(raw)


def _b64(values: list[bytes]) -> list[str]:
    return [base64.b64encode(value).decode() for value in values]


async def _run(request: web.Request, fn: Callable[[sqlite_utils.Database], Any]) -> Any:
    return await request.app[TLOG].database.run(fn)


@_public
async def get_checkpoint(request: web.Request) -> web.StreamResponse:
    """The latest signed checkpoint (a C2SP signed note)."""
    tlog = request.app[TLOG]
    note = await _run(request, latest_checkpoint)
    if note is None:
        note = await _run(
            request, lambda db: sign_checkpoint(db, tlog.key, tlog.origin, tlog.clock())
        )
    return web.Response(text=note, content_type="text/plain", headers={"Cache-Control": "no-store"})


@_public
async def get_key(request: web.Request) -> web.StreamResponse:
    """The log's C2SP verifier key, as it is now (after the last rotation)."""
    tlog = request.app[TLOG]
    if isinstance(tlog.key, LogKey):
        await _run(request, tlog.key.refresh)
    return web.Response(
        text=tlog.verifier_key + "\n",
        content_type="text/plain",
        headers={"Cache-Control": "no-store"},
    )


@_public
async def get_key_changes(request: web.Request) -> web.StreamResponse:
    """The indices of the log_key entries, so that a holder of one receipt can follow the log's
    key from the one it trusts to the one that signed the checkpoint."""
    indices = await _run(request, log_key_changes)
    return web.json_response({"indices": indices})


@_public
async def get_entries(request: web.Request) -> web.StreamResponse:
    start = _query_int(request, "start")
    end = _query_int(request, "end")
    page = await _run(request, lambda db: entries(db, start, end))
    return web.json_response({"start": start, "end": start + len(page), "entries": _b64(page)})


@_public
async def get_inclusion(request: web.Request) -> web.StreamResponse:
    index = _query_int(request, "index")
    tree_size = _query_int(request, "size")
    proof = await _run(request, lambda db: inclusion(db, index, tree_size))
    return web.json_response({"index": index, "size": tree_size, "proof": _b64(proof)})


@_public
async def get_consistency(request: web.Request) -> web.StreamResponse:
    old = _query_int(request, "old")
    new = _query_int(request, "new")
    proof = await _run(request, lambda db: consistency(db, old, new))
    return web.json_response({"old": old, "new": new, "proof": _b64(proof)})


def _query_hash(request: web.Request, name: str, what: str) -> bytes:
    raw = request.query[name]
    try:
        value = bytes.fromhex(raw) if raw.isascii() and raw.isalnum() else b""
    except ValueError:
        value = b""
    if len(value) != 32:
        raise ApiError(
            f"query parameter {name} must be {what}, 64 hex digits", code="bad_parameter"
        )
    return value


@_public
async def get_find(request: web.Request) -> web.StreamResponse:
    """The index of a receipt (`digest`: SHA-256 of its envelope) or of an agent's key
    (`agent_id`), so that a holder of one receipt can prove it is logged without the whole log."""
    given = [name for name in ("digest", "agent_id") if name in request.query]
    if len(given) != 1:
        raise ApiError(
            "give exactly one of the query parameters digest and agent_id", code="missing_parameter"
        )
    if given[0] == "digest":
        key = _query_hash(request, "digest", "the SHA-256 of a receipt envelope")
        kind, what = log_entries.RECEIPT, f"receipt with digest {key.hex()}"
    else:
        key = _query_hash(request, "agent_id", "an agent id")
        kind, what = log_entries.AGENT_KEY, f"key of agent {key.hex()}"
    index = await _run(request, lambda db: _find(db, kind, key))
    if index is None:
        raise NotFound(f"no {what} is in the log")
    return web.json_response({given[0]: key.hex(), "index": index, "kind": kind})


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/v1/log/checkpoint", get_checkpoint),
    ("GET", "/v1/log/key", get_key),
    ("GET", "/v1/log/key-changes", get_key_changes),
    ("GET", "/v1/log/entries", get_entries),
    ("GET", "/v1/log/proof/inclusion", get_inclusion),
    ("GET", "/v1/log/proof/consistency", get_consistency),
    ("GET", "/v1/log/find", get_find),
]


async def checkpoint_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: sign checkpoints in the background while the app runs, and a last one at
    shutdown. Append it after the context that starts the database, so it stops first."""
    tlog = app[TLOG]
    task = asyncio.create_task(
        checkpoint_loop(
            tlog.database, tlog.key, tlog.origin, tlog.checkpoint_interval_s, tlog.clock
        ),
        name="log-checkpoints",
    )
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    try:
        await tlog.database.run(lambda db: sign_checkpoint(db, tlog.key, tlog.origin, tlog.clock()))
    except Exception:
        log.exception("signing the last log checkpoint failed")


def add_routes(app: web.Application, tlog: TransparencyLog) -> None:
    """Mount the log's public routes and its checkpoint signer on an app."""
    app[TLOG] = tlog
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    app.cleanup_ctx.append(checkpoint_ctx)
