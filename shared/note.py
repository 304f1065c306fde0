"""C2SP signed notes (https://c2sp.org/signed-note), Ed25519 only: sign, cosign, parse, open."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import NamedTuple

from shared.errors import KeyMaterialError, NoteError
from shared.identity import (
    NOTE_KEY_HASH_SIZE,
    SIGNATURE_SIZE,
    PrivateKey,
    VerifierKey,
    check_note_name,
    note_key_hash,
)

MAX_NOTE_SIZE = 1 << 20
MAX_SIGNATURES = 100
SIGNATURE_PREFIX = "\u2014 "  # em dash, space
# The spec forbids ASCII controls only; DEL and C1 controls are valid note text.
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")


class NoteSignature(NamedTuple):
    """One signature line: the signer's name, its 4-byte key hash and the signature bytes."""

    name: str
    key_hash: bytes
    signature: bytes

    def line(self) -> str:
        encoded = base64.b64encode(self.key_hash + self.signature).decode()
        return f"{SIGNATURE_PREFIX}{self.name} {encoded}\n"


@dataclass(frozen=True)
class OpenedNote:
    """A note whose signatures verified: its text and the trusted keys that signed it."""

    text: str
    verified_by: tuple[VerifierKey, ...]


def decode_base64(encoded: str, what: str) -> bytes:
    """Decode standard padded base64, accepting only the one canonical spelling of the bytes.

    Python (like Go) ignores the unused low bits of the last character, so two spellings
    decode alike; requiring the canonical one means every changed character is noticed.
    """
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NoteError(f"{what} is not valid base64") from exc
    if base64.b64encode(raw).decode() != encoded:
        raise NoteError(f"{what} is not canonical base64 (its padding bits are not zero)")
    return raw


def check_text(text: str) -> None:
    """Check note text against the signed-note rules, and against one rule of our own.

    C2SP: valid UTF-8, ends in a newline, no ASCII control character but newline. Ours: no
    line of the text starts with an em dash and a space, so no text line can be taken
    for a signature line by a person reading the note.
    """
    if not isinstance(text, str):
        raise NoteError("note text must be a string")
    _check_characters(text, "note text")
    if not text.endswith("\n"):
        raise NoteError("note text must end in a newline")
    for number, line in enumerate(text.split("\n")[:-1], start=1):
        if line.startswith(SIGNATURE_PREFIX):
            raise NoteError(
                f"line {number} of the note text starts with an em dash and a space, "
                "which is reserved for signature lines"
            )


def parse_note(note: str | bytes) -> tuple[str, list[NoteSignature]]:
    """Split a signed note into text and signature lines, checking format but not signatures."""
    note = _decode_note(note)
    _check_characters(note, "a signed note")
    if not note.endswith("\n"):
        raise NoteError("a signed note must end in a newline")
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("a signed note needs a blank line between its text and its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block:
        raise NoteError("a signed note needs at least one signature line after the blank line")
    check_text(text)
    lines = block.split("\n")[:-1]
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"a signed note may carry at most {MAX_SIGNATURES} signatures")
    return text, [_parse_signature_line(line, number) for number, line in enumerate(lines, 1)]


def open_note(note: str | bytes, verifiers: list[VerifierKey]) -> OpenedNote:
    """Verify a note against trusted keys and return its text.

    Signature lines from unknown keys (name and key hash not both matching a trusted key)
    are ignored, as the spec requires. A line from a trusted key that fails to verify
    rejects the whole note, and so does a note that no trusted key signed.
    """
    text, signatures = parse_note(note)
    trusted = _index_verifiers(verifiers)
    message = text.encode()
    verified: dict[tuple[str, bytes], VerifierKey] = {}
    for sig in signatures:
        verifier = trusted.get((sig.name, sig.key_hash))
        if verifier is None:
            continue
        if len(sig.signature) != SIGNATURE_SIZE or not verifier.public.verify(
            sig.signature, message
        ):
            raise NoteError(
                f"the signature by {sig.name} (key hash {sig.key_hash.hex()}) does not verify"
            )
        verified[(sig.name, sig.key_hash)] = verifier
    if not verified:
        signers = ", ".join(sorted({sig.name for sig in signatures}))
        raise NoteError(f"the note is not signed by any trusted key (it is signed by {signers})")
    return OpenedNote(text, tuple(verified.values()))


def sign_note(text: str, name: str, key: PrivateKey) -> str:
    """Sign text (ending in a newline) as `name`, returning the whole signed note."""
    check_text(text)
    note = text + "\n" + _signature(text, name, key).line()
    _check_size(note)
    return note


def add_signature(note: str | bytes, name: str, key: PrivateKey) -> str:
    """Append a signature by `key` as `name` to a signed note, e.g. a witness cosignature.

    The existing signatures are kept as they are and not verified here.
    """
    text, signatures = parse_note(note)
    new = _signature(text, name, key)
    if any((sig.name, sig.key_hash) == (new.name, new.key_hash) for sig in signatures):
        raise NoteError(f"the note already carries a signature by {name} with this key")
    if len(signatures) >= MAX_SIGNATURES:
        raise NoteError(f"a signed note may carry at most {MAX_SIGNATURES} signatures")
    signed = text + "\n" + "".join(sig.line() for sig in [*signatures, new])
    _check_size(signed)
    return signed


def _signature(text: str, name: str, key: PrivateKey) -> NoteSignature:
    try:
        key_hash = note_key_hash(name, key.public)
    except KeyMaterialError as exc:
        raise NoteError(exc.detail) from exc
    return NoteSignature(name, key_hash, key.sign(text.encode()))


def _decode_note(note: str | bytes) -> str:
    if isinstance(note, bytes):
        _check_size(note)
        try:
            return note.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NoteError(f"a signed note must be valid UTF-8 (bad byte at {exc.start})") from exc
    if not isinstance(note, str):
        raise NoteError("a signed note must be text or bytes")
    _check_size(note)
    return note


def _check_size(note: str | bytes) -> None:
    # Check the length first so an oversized string is never encoded.
    if len(note) > MAX_NOTE_SIZE or (
        isinstance(note, str) and len(_utf8(note, "a signed note")) > MAX_NOTE_SIZE
    ):
        raise NoteError(f"a signed note may be at most {MAX_NOTE_SIZE} bytes")


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise NoteError(f"{what} must be valid UTF-8 (unpaired surrogate at {exc.start})") from exc


def _check_characters(text: str, what: str) -> None:
    _utf8(text, what)
    found = _CONTROL.search(text)
    if found:
        line = text.count("\n", 0, found.start()) + 1
        raise NoteError(
            f"{what} contains the control character U+{ord(found.group()):04X} on line {line}; "
            "only newline is allowed"
        )


def _parse_signature_line(line: str, number: int) -> NoteSignature:
    if not line.startswith(SIGNATURE_PREFIX):
        raise NoteError(f"signature line {number} must start with an em dash (U+2014) and a space")
    name, space, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
    if not space:
        raise NoteError(f"signature line {number} must be '— <name> <base64 signature>'")
    try:
        check_note_name(name)
    except KeyMaterialError as exc:
        raise NoteError(f"signature line {number}: {exc.detail}") from exc
    raw = decode_base64(encoded, f"the signature on line {number}")
    if len(raw) <= NOTE_KEY_HASH_SIZE:
        raise NoteError(
            f"the signature on line {number} must hold a {NOTE_KEY_HASH_SIZE}-byte key hash "
            "and a signature"
        )
    return NoteSignature(name, raw[:NOTE_KEY_HASH_SIZE], raw[NOTE_KEY_HASH_SIZE:])


def _index_verifiers(verifiers: list[VerifierKey]) -> dict[tuple[str, bytes], VerifierKey]:
    index: dict[tuple[str, bytes], VerifierKey] = {}
    for verifier in verifiers:
        slot = (verifier.name, verifier.key_hash)
        if index.get(slot, verifier).public != verifier.public:
            raise KeyMaterialError(
                f"two trusted keys share the name {verifier.name} and key hash "
                f"{verifier.key_hash.hex()}; signatures by them cannot be told apart"
            )
        index[slot] = verifier
    return index
