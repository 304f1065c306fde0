"""Rotating the log's key (`admin rotate-log-key`): a new key, the old key's signed word for it
logged, and the old key kept."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from coordinator.storage import Session, transaction
from coordinator.tlog.checkpoints import sign_checkpoint
from coordinator.tlog.keys import LogKey, archived_key_path, pending_key_path, verifier_key_text
from coordinator.tlog.store import append_entries
from shared import log_entries
from shared.errors import SuanliError
from shared.identity import PrivateKey, save_private_key


def rotate_log_key(db: Session, key_path: Path, now_ms: int) -> dict[str, Any]:
    """Make a new log key and log the old key's signature over it; keep the old key.

    The new key is written (0600) before the log_key entry commits, and the old one is archived
    beside the database; a running server switches to the new key in the first transaction that
    signs after the entry. Run inside no transaction: this one commits its own.
    """
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
