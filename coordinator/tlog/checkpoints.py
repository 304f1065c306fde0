"""The log's C2SP checkpoints: signed with the log key in force, stored, and signed again in
the background while the log grows."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from coordinator.storage import Session, Store
from coordinator.tlog.keys import LogKey, default_origin
from coordinator.tlog.store import tree
from shared.checkpoint import Checkpoint, open_checkpoint
from shared.checkpoint import sign_checkpoint as sign_checkpoint_note
from shared.clock import now_ms
from shared.errors import SuanliError
from shared.identity import PrivateKey, verifier_key

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT_INTERVAL_S = 2.0


def latest_checkpoint(db: Session) -> str | None:
    """The signed note of the largest tree signed so far, or None before the first."""
    row = db.conn.execute("SELECT note FROM log_checkpoints ORDER BY size DESC LIMIT 1").fetchone()
    return str(row[0]) if row is not None else None


def sign_checkpoint(db: Session, key: PrivateKey | LogKey, origin: str | None, now_ms: int) -> str:
    """Sign (and store) a checkpoint of the log as it is now; returns the signed note.

    Given a LogKey, the key and origin in force now (after any rotation) sign it.
    When the latest stored checkpoint already covers the current size and was signed by this
    key for this origin, it is returned as it is: an idle log is not re-signed.
    """
    if isinstance(key, LogKey):
        log_key = key
        log_key.refresh(db)
        key, origin = log_key.key, log_key.origin
    origin = origin or default_origin(key)
    log_tree = tree(db)
    conn = db.conn
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
        "INSERT INTO log_checkpoints (size, note, at_ms) VALUES (?, ?, ?) "
        "ON CONFLICT (size) DO UPDATE SET note = excluded.note, at_ms = excluded.at_ms",
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
    database: Store,
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
