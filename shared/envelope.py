"""Signed envelopes: the only place Suanli signs or verifies anything.

An envelope is the canonical msgpack array `[payload_bytes, key_id, signature]`. The
signature is Ed25519 over `b"suanli/<kind>/v1\\n" + payload_bytes`, so a signature made for
one kind never verifies as another. Opening checks the signature over the exact bytes
received first, then decodes the payload and requires it to be canonical.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

import msgpack

from shared import canonical
from shared.errors import EncodingError, EnvelopeError, SignatureError
from shared.identity import KEY_ID_SIZE, SIGNATURE_SIZE, PrivateKey, PublicKey

# kind -> largest payload accepted, in bytes
KINDS: dict[str, int] = {
    "receipt": 4 * 1024,
    "heartbeat": 256 * 1024,
    "request": 1024 * 1024,
    "enrolment": 4 * 1024,
    "acceptance": 256 * 1024,  # one acknowledgement answers a batch of up to 500 receipts
    "lease": 16 * 1024,
    "transaction": 64 * 1024,
    "log_key": 1024,  # the old log key's word for the new one (shared.log_entries)
}
_ENVELOPE_OVERHEAD = 2 + 5 + 2 + KEY_ID_SIZE + 2 + SIGNATURE_SIZE
_DOMAINS = {kind: f"suanli/{kind}/v1\n".encode() for kind in KINDS}


class Opened(NamedTuple):
    """A verified envelope: the decoded payload, its exact bytes, the signer and the hash."""

    payload: Any
    payload_bytes: bytes
    key_id: bytes
    digest: bytes


def domain(kind: str) -> bytes:
    try:
        return _DOMAINS[kind]
    except KeyError:
        raise EnvelopeError(f"unknown envelope kind {kind!r}") from None


def max_envelope_bytes(kind: str) -> int:
    domain(kind)
    return KINDS[kind] + _ENVELOPE_OVERHEAD


def envelope_digest(envelope: bytes) -> bytes:
    """SHA-256 of the envelope's bytes: what chains and the log refer to."""
    return hashlib.sha256(envelope).digest()


def seal(kind: str, payload: object, key: PrivateKey) -> bytes:
    """Encode the payload canonically and sign it for `kind`."""
    prefix = domain(kind)
    payload_bytes = canonical.encode(payload)
    if len(payload_bytes) > KINDS[kind]:
        raise EnvelopeError(
            f"a {kind} payload is {len(payload_bytes)} bytes; the limit is {KINDS[kind]}"
        )
    signature = key.sign(prefix + payload_bytes)
    encoded = msgpack.packb([payload_bytes, key.public.key_id, signature], use_bin_type=True)
    return bytes(encoded)  # msgpack is untyped: its packb returns bytes


_KEY_ID_HEADER = bytes([0xC4, KEY_ID_SIZE])
_SIGNATURE_HEADER = bytes([0xC4, SIGNATURE_SIZE])


def _split(envelope: bytes, kind: str) -> tuple[bytes, bytes, bytes]:
    """Parse the fixed envelope layout by hand: canonical by construction, and cheap."""
    if not isinstance(envelope, bytes):
        raise EnvelopeError("an envelope must be given as bytes")
    limit = max_envelope_bytes(kind)
    size = len(envelope)
    if size > limit:
        raise EnvelopeError(f"a {kind} envelope is {size} bytes; the limit is {limit}")
    if size < 3 or envelope[0] != 0x93:
        raise EnvelopeError("an envelope is a msgpack array [payload, key_id, signature]")
    marker = envelope[1]
    if marker == 0xC4:
        length, offset, smallest = envelope[2], 3, 0
    elif marker == 0xC5:
        length, offset, smallest = int.from_bytes(envelope[2:4]), 4, 1 << 8
    elif marker == 0xC6:
        length, offset, smallest = int.from_bytes(envelope[2:6]), 6, 1 << 16
    else:
        raise EnvelopeError("an envelope's payload must be msgpack bin")
    if length < smallest:
        raise EnvelopeError("envelope is not in canonical form (payload length not minimal)")
    payload_end = offset + length
    if size != payload_end + 2 + KEY_ID_SIZE + 2 + SIGNATURE_SIZE:
        raise EnvelopeError("envelope is truncated or has trailing bytes")
    key_at = payload_end + 2
    signature_at = key_at + KEY_ID_SIZE + 2
    if (
        envelope[payload_end:key_at] != _KEY_ID_HEADER
        or envelope[signature_at - 2 : signature_at] != _SIGNATURE_HEADER
    ):
        raise EnvelopeError(
            f"an envelope's key id must be {KEY_ID_SIZE} bytes and its signature {SIGNATURE_SIZE}"
        )
    return (
        envelope[offset:payload_end],
        envelope[key_at : key_at + KEY_ID_SIZE],
        envelope[signature_at:],
    )


def unverified_payload(envelope: bytes, kind: str) -> bytes:
    """The payload bytes of an envelope whose signature has NOT been checked."""
    return _split(envelope, kind)[0]


def peek_key_id(envelope: bytes, kind: str) -> bytes:
    """The key id an envelope claims, to find its key; nothing in it is verified yet."""
    return _split(envelope, kind)[1]


def open_envelope(envelope: bytes, kind: str, key: PublicKey) -> Opened:
    """Verify an envelope of `kind` signed by `key` and return its decoded payload."""
    payload_bytes, key_id, signature = _split(envelope, kind)
    if key_id != key.key_id:
        raise SignatureError(f"the {kind} was signed by another key than the one expected")
    if not key.verify(signature, _DOMAINS[kind] + payload_bytes):
        raise SignatureError(f"the {kind} signature does not verify")
    try:
        payload = canonical.decode(payload_bytes, KINDS[kind])
    except EncodingError as exc:
        raise EncodingError(f"the {kind} payload is invalid: {exc.detail}") from exc
    return Opened(payload, payload_bytes, key_id, hashlib.sha256(envelope).digest())
