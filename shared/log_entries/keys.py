"""Rotations of the log's own key.

    log_key  a "log_key" envelope signed by the log key in force until this entry

A log_key entry rotates the log's key: its envelope is signed by the key in force so far (the
old key) over

    [origin, old public key (32 bytes), new public key (32 bytes)]

and from the next entry on, checkpoints and acknowledgements are signed by the new key. An
auditor who trusted the old key follows the chain with `open_log_key`; the origin, the log's
name in its checkpoints, stays the same across rotations.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import shared.canonical as canonical
from shared.envelope import (
    envelope_digest,
    max_envelope_bytes,
    open_envelope,
    seal,
    unverified_payload,
)
from shared.errors import SuanliError
from shared.identity import PUBLIC_KEY_SIZE, PrivateKey, PublicKey
from shared.log_entries.fields import array, text
from shared.log_entries.fields import envelope as envelope_field
from shared.log_entries.kinds import LOG_KEY_KIND, LogEntryError


class LogKeyEntry(NamedTuple):
    """A rotation of the log's key: the old key's signed word for the new one (an envelope)."""

    envelope: bytes

    @property
    def digest(self) -> bytes:
        return envelope_digest(self.envelope)

    def to_wire(self) -> bytes:
        return self.envelope


class LogKeyChange(NamedTuple):
    """What a log_key envelope says: the log (origin) moves from old_key to new_key."""

    origin: str
    old_key: bytes
    new_key: bytes

    def to_payload(self) -> list[Any]:
        return [self.origin, self.old_key, self.new_key]


def parse_log_key_entry(body: Any) -> LogKeyEntry:
    read_log_key(envelope_field(body, LOG_KEY_KIND))
    return LogKeyEntry(body)


def seal_log_key(origin: str, new_key: PublicKey, old_key: PrivateKey) -> bytes:
    """The old key's signature over the new one, for the log named `origin`."""
    change = LogKeyChange(origin, old_key.public.raw, new_key.raw)
    _log_key_change(change.to_payload())
    return seal(LOG_KEY_KIND, change.to_payload(), old_key)


def open_log_key(envelope: bytes, in_force: PublicKey) -> LogKeyChange:
    """Verify a rotation against the key in force before it and parse it.

    Raises EnvelopeError (SignatureError when another key signed it), EncodingError, or
    LogEntryError when the payload is malformed or names another old key than its signer.
    """
    change = _log_key_change(open_envelope(envelope, LOG_KEY_KIND, in_force).payload)
    if change.old_key != in_force.raw:
        raise LogEntryError(
            "the log_key rotation names another old key than the one that signed it"
        )
    return change


def read_log_key(envelope: bytes) -> LogKeyChange:
    """Parse a rotation without checking its signature (to find the log's first key)."""
    try:
        payload = canonical.decode(
            unverified_payload(envelope, LOG_KEY_KIND), max_envelope_bytes(LOG_KEY_KIND)
        )
    except SuanliError as exc:
        raise LogEntryError(f"the log_key envelope is malformed: {exc.detail}") from None
    return _log_key_change(payload)


def _log_key_change(payload: Any) -> LogKeyChange:
    origin, old_key, new_key = array(payload, 3, "a log_key rotation")
    text(origin, "a log_key rotation's origin")
    for value, what in ((old_key, "old"), (new_key, "new")):
        if type(value) is not bytes or len(value) != PUBLIC_KEY_SIZE:
            raise LogEntryError(f"a log_key rotation's {what} key is {PUBLIC_KEY_SIZE} bytes")
    if old_key == new_key:
        raise LogEntryError("a log_key rotation must name a new key, not the old one again")
    return LogKeyChange(origin, old_key, new_key)
