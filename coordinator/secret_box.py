"""Job secrets at rest: secret env values and registry credentials are sealed with AES-256-GCM
under a key file the coordinator holds beside its log key, so a copy of the database (a backup,
a standby's replica, a stolen disk image) holds no secret in clear.

Each value is bound to its job and name (the GCM associated data), so a sealed value moved to
another job's row does not open. Values written in clear before sealing existed are sealed by
the leader as it starts (`seal_clear_secrets`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
from pathlib import Path

from coordinator.config import ConfigError
from coordinator.storage import Session
from shared.sealing import KEY_BYTES, SealError, new_key, open_sealed, seal

__all__ = ["SEALED_PREFIX", "SecretBox", "seal_clear_secrets", "secrets_key_location"]

SEALED_PREFIX = "sealed1:"


def secrets_key_location(log_key: Path) -> Path:
    """The secrets key's file: beside the log key, e.g. coordinator.db.key gives
    coordinator.db.secrets-key."""
    return log_key.with_suffix(".secrets-key")


class SecretBox:
    """Seals and opens secret values; the key is read (or, on a leader, made) at first use, so a
    standby without secrets to open needs no copy of it."""

    def __init__(self, path: Path | None, create: bool = True) -> None:
        self.path = path
        self.create = create
        self._key: bytes | None = None if path is not None else new_key()

    @classmethod
    def ephemeral(cls) -> SecretBox:
        """A box whose key lives in memory only (for a coordinator that keeps no key file)."""
        return cls(None)

    def seal(self, job_id: str, name: str, value: str) -> str:
        sealed = seal(self._secret_key(), _context(job_id, name), value.encode())
        return SEALED_PREFIX + base64.b64encode(sealed).decode()

    def open(self, job_id: str, name: str, stored: str) -> str:
        if not stored.startswith(SEALED_PREFIX):
            return stored  # written in clear before values were sealed, not yet resealed
        try:
            raw = base64.b64decode(stored[len(SEALED_PREFIX) :], validate=True)
        except binascii.Error:
            raise ConfigError(
                f"the stored secret {name} of job {job_id} is damaged (not base64)"
            ) from None
        # a sealed value proves a key was made for this database: never make another
        key = self._secret_key(may_create=False)
        try:
            plain = open_sealed(key, _context(job_id, name), raw)
        except SealError:
            raise ConfigError(
                f"the secret {name} of job {job_id} does not open with the key in {self.path}: "
                "every coordinator of one database needs a copy of the same secrets key"
            ) from None
        return plain.decode()

    def _secret_key(self, may_create: bool = True) -> bytes:
        if self._key is None:
            assert self.path is not None
            self._key = self._load_key(self.path, may_create and self.create)
        return self._key

    @staticmethod
    def _load_key(path: Path, may_create: bool) -> bytes:
        try:
            key = path.read_bytes()
        except FileNotFoundError:
            if not may_create:
                raise ConfigError(
                    f"no secrets key at {path}, and the database holds values sealed with one: "
                    "copy the key of the coordinator that sealed them (it sits beside its log "
                    "key) instead of letting this one make another"
                ) from None
            key = _write_new_key(path)
        if len(key) != KEY_BYTES:
            raise ConfigError(f"{path} is not a secrets key: expected {KEY_BYTES} bytes")
        return key


def seal_clear_secrets(db: Session, box: SecretBox) -> int:
    """Seal the values a coordinator from before sealing left in clear; how many there were."""
    clear = [
        (row["job_id"], row["name"], row["value"])
        for row in db.query("SELECT job_id, name, value FROM job_secrets")
        if not str(row["value"]).startswith(SEALED_PREFIX)
    ]
    for job_id, name, value in clear:
        db.conn.execute(
            "UPDATE job_secrets SET value = ? WHERE job_id = ? AND name = ?",
            [box.seal(job_id, name, value), job_id, name],
        )
    return len(clear)


def _context(job_id: str, name: str) -> bytes:
    return f"suanli/job-secret/v1\n{job_id}\n{name}".encode()


def _write_new_key(path: Path) -> bytes:
    """A new key in a file only its owner reads; a key another process wrote first wins."""
    key = new_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    try:
        os.write(fd, key)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    os.close(fd)
    return key
