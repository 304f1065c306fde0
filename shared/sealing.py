"""Authenticated encryption of small secrets at rest (AES-256-GCM): the one place outside
signatures where the project touches a cipher, so it lives beside the other primitives."""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.errors import SuanliError

__all__ = ["KEY_BYTES", "SealError", "new_key", "open_sealed", "seal"]

KEY_BYTES = 32
NONCE_BYTES = 12


class SealError(SuanliError):
    """A sealed value does not open: another key, another context, or altered bytes."""

    code = "seal_error"


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=KEY_BYTES * 8)


def seal(key: bytes, context: bytes, plain: bytes) -> bytes:
    """nonce || ciphertext || tag; `context` must be given again to open it."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plain, context)


def open_sealed(key: bytes, context: bytes, sealed: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], context)
    except (InvalidTag, ValueError):
        raise SealError("the sealed value does not open with this key and context") from None
