"""The key the log signs with, the log's name (its origin), and where rotated keys are kept.

The database's last log_key entry says which key is in force; `LogKey` follows it, so that a
rotation made by another process takes effect at the next signature.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from coordinator.storage import Connection, Session
from shared import log_entries
from shared.checkpoint import open_checkpoint
from shared.errors import SuanliError
from shared.identity import PrivateKey, PublicKey, load_private_key, save_private_key, verifier_key

log = logging.getLogger(__name__)


class LogKeyMissing(SuanliError):
    """The log says its key rotated to a key that no key file beside the database holds."""

    code = "log_key_missing"


def _signs(note: str, key: PrivateKey) -> bool:
    origin = default_origin(key)
    try:
        open_checkpoint(note, verifier_key(origin, key.public), origin)
    except SuanliError:
        return False
    return True


def default_origin(key: PrivateKey) -> str:
    """The log's name in its checkpoints: stable for a key, different for another key."""
    return f"suanli.coordinator/{key.public.key_id.hex()[:16]}"


def verifier_key_text(key: PrivateKey, origin: str) -> str:
    """The C2SP verifier key auditors pin: `origin+keyhash+base64(0x01 || public key)`."""
    return str(verifier_key(origin, key.public))


def pending_key_path(key_path: Path, key: PublicKey) -> Path:
    """Where a rotation writes the new key before the log names it (then moves it to key_path):
    named by its key id, so the log's entry says where to find it and rotations never collide."""
    return key_path.with_name(f"{key_path.name}.{key.key_id.hex()[:16]}.next")


def archived_key_path(key_path: Path, key: PublicKey) -> Path:
    """Where a rotated-out key is kept, named by its key id: never deleted."""
    return key_path.with_name(f"{key_path.name}.{key.key_id.hex()[:16]}.retired")


def log_key_changes(db: Session) -> list[int]:
    """The indices of the log_key entries, in log order."""
    rows = db.conn.execute(
        "SELECT idx FROM log_lookup WHERE kind = ? ORDER BY idx", [log_entries.LOG_KEY]
    ).fetchall()
    return [int(idx) for (idx,) in rows]


def _last_change_index(conn: Connection) -> int | None:
    row = conn.execute(
        "SELECT MAX(idx) FROM log_lookup WHERE kind = ?", [log_entries.LOG_KEY]
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def _change_at(conn: Connection, index: int) -> log_entries.LogKeyChange:
    row = conn.execute("SELECT data FROM log_entries WHERE idx = ?", [index]).fetchone()
    body = log_entries.decode_entry(bytes(row[0])).body
    assert isinstance(body, log_entries.LogKeyEntry)
    return log_entries.read_log_key(body.envelope)


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
    def load(cls, db: Session, key_path: Path, create: bool = True) -> LogKey:
        """The key in force for the log in `db`: key_path (created, when `create`, for a log
        that never rotated and has signed nothing), or the key its last rotation names,
        wherever beside it that rotation left it. Raises LogKeyMissing rather than sign with a
        key the log does not name (a standby, or a second machine, given no copy of it)."""
        index = _last_change_index(db.conn)
        if index is None:
            signed = db.conn.execute("SELECT note FROM log_checkpoints LIMIT 1").fetchone()
            if not key_path.exists():
                if signed is not None or not create:
                    raise LogKeyMissing(
                        f"the log's key file {key_path} is missing; copy the leader's key "
                        "there (every coordinator of one database signs with the same key)"
                    )
                save_private_key(key_path, PrivateKey.generate())
            key = load_private_key(key_path)
            if signed is not None and not _signs(str(signed[0]), key):
                raise LogKeyMissing(
                    f"the key in {key_path} is not the key this log's checkpoints are signed "
                    "with; copy the leader's key there"
                )
            return cls(key, default_origin(key), key_path)
        change = _change_at(db.conn, index)
        return cls(_find_key(key_path, change.new_key), change.origin, key_path, index)

    def refresh(self, db: Session) -> PrivateKey:
        """Follow the log's last rotation, if it is newer than the one seen; returns the key."""
        index = _last_change_index(db.conn)  # one indexed read in each signing transaction
        if index is None or index == self._seen:
            return self.key
        change = _change_at(db.conn, index)
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
