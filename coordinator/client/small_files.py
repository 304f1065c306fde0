"""Reading a small file the user names (a job file, a secrets file): bounded, as UTF-8 text."""

from __future__ import annotations

import sys


class TooLarge(Exception):
    """The file holds more than the reader's bound."""


def read_text(path: str, limit: int, dash_is_stdin: bool = False) -> str:
    """The text of `path` (with `dash_is_stdin`, "-" is standard input), at most `limit` bytes
    read; raises OSError, TooLarge or UnicodeDecodeError for the caller to put in its words."""
    if dash_is_stdin and path == "-":
        raw = sys.stdin.buffer.read(limit + 1)
    else:
        with open(path, "rb") as file:
            raw = file.read(limit + 1)
    if len(raw) > limit:
        raise TooLarge(path)
    return raw.decode("utf-8")
