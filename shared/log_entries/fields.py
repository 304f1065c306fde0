"""The checks every entry body's fields pass, each raising LogEntryError naming the field."""

from __future__ import annotations

from typing import Any

from shared.envelope import max_envelope_bytes
from shared.log_entries.kinds import LogEntryError

MAX_TEXT = 256
MAX_POSTINGS = 64
HASH_SIZE = 32
INT_MAX = 2**63 - 1


def envelope(value: Any, kind: str) -> bytes:
    if type(value) is not bytes or not 0 < len(value) <= max_envelope_bytes(kind):
        raise LogEntryError(f"a logged {kind} envelope is 1 to {max_envelope_bytes(kind)} bytes")
    return value


def array(value: Any, length: int, what: str) -> list[Any]:
    if type(value) is not list or len(value) != length:
        raise LogEntryError(f"{what} is an array of {length} values")
    return value


def text(value: Any, what: str) -> str:
    if type(value) is not str or not 0 < len(value) <= MAX_TEXT:
        raise LogEntryError(f"{what} must be text of 1 to {MAX_TEXT} characters")
    return value


def integer(value: Any, what: str, low: int = 0) -> int:
    if type(value) is not int or not low <= value <= INT_MAX:
        raise LogEntryError(f"{what} must be an integer from {low} to {INT_MAX}")
    return value


def digest(value: Any, what: str) -> bytes:
    if type(value) is not bytes or len(value) != HASH_SIZE:
        raise LogEntryError(f"{what} is {HASH_SIZE} bytes")
    return value
