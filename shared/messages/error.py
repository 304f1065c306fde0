"""The one error body every refusal carries, and the error a body that fails its declared
type raises at the door."""

from __future__ import annotations

from shared.errors import SuanliError
from shared.messages.fields import Message


class ErrorBody(Message):
    """{"error": a stable code, "detail": one sentence for people}."""

    error: str
    detail: str


class MessageError(SuanliError):
    """A body is not what its route declares; the detail names the field and the rule."""

    code = "invalid"

    def __init__(self, detail: str, code: str | None = None) -> None:
        super().__init__(detail)
        if code is not None:
            self.code = code
