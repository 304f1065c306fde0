"""The field types messages are declared with: bounded integers, text, and the checks that a
type alone cannot say (printable text), shared by the agent protocol, the API and the log."""

from __future__ import annotations

from typing import Annotated

import msgspec

INT64_MAX = 2**63 - 1
# no NUL and no lone surrogate (JSON can smuggle one in as \ud800; UTF-8 cannot carry it);
# written with escapes so that JSON Schema validators read the same pattern
UNICODE_TEXT = r"^[^\x00\ud800-\udfff]*$"


class Message(msgspec.Struct):
    """Base of every declared body (the OpenAPI document and the tests find them by it)."""


Count = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
Milliseconds = Annotated[int, msgspec.Meta(ge=-(2**63), le=INT64_MAX)]
MicroYuan = Annotated[int, msgspec.Meta(ge=-(2**63), le=INT64_MAX, description="micro-yuan")]


def require_printable(struct: msgspec.Struct, names: tuple[str, ...], low: int, high: int) -> None:
    """Refuse text fields that are set but not printable, naming the field: msgspec's patterns
    cannot say "printable" (Unicode categories), so the struct checks it after decoding."""
    for name in names:
        value = getattr(struct, name)
        if isinstance(value, str) and not value.isprintable():
            raise ValueError(
                f"{name}: expected {low} to {high} printable characters, got {quote(value)}"
            )


def quote(value: str, limit: int = 40) -> str:
    """A string as the user typed it, in double quotes, shortened; escapes what is invisible."""
    shown = value if len(value) <= limit else value[:limit] + "…"
    out = []
    for char in shown:
        if char == '"' or char == "\\":
            out.append("\\" + char)
        elif char.isprintable() or char == "…":
            out.append(char)
        else:
            out.append(f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'
