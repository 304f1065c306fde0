"""The door every body passes: bytes (or an opened signed body) into its declared type, or a
MessageError naming the field. Signed bytes are verified before they get here, never
re-encoded: only the body a verified envelope carries is converted."""

from __future__ import annotations

import json
import re
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

from shared.messages.error import MessageError
from shared.messages.explain import JSON, MSGPACK, QUERY, UNKNOWN, describe, explain, members
from shared.messages.fields import quote

T = TypeVar("T")
_json_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}
_msgpack_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}
_SURROGATE = re.compile("[\ud800-\udfff]")
_DECIMAL = re.compile(r"[0-9]{1,19}")


def decode_json(type_: type[T], raw: bytes, *, code: str | None = None) -> T:
    """A JSON body as `type_`; refusals name the field in the user's words. `code` is the error
    code of a body that is JSON but not a `type_` (bytes that are not JSON are "invalid")."""
    decoder = _json_decoders.get(type_)
    if decoder is None:
        decoder = _json_decoders[type_] = msgspec.json.Decoder(type_)
    try:
        return decoder.decode(raw)  # type: ignore[no-any-return]  # Decoder[Any] per type
    except msgspec.ValidationError as exc:
        raise MessageError(
            explain(type_, exc, _untyped(msgspec.json.decode, raw), JSON), code
        ) from None
    except msgspec.DecodeError:
        pass
    # msgspec refuses some JSON that Python reads (a lone surrogate such as \ud800, NaN): read
    # it as Python does, so that the refusal still names the field that holds it
    try:
        value = json.loads(raw)
    except ValueError:
        raise MessageError("the request body is not valid JSON") from None
    except RecursionError:
        raise MessageError("the request body nests too deeply", "too_deep") from None
    return _convert(type_, value, code, JSON)


def decode_msgpack(type_: type[T], raw: bytes, *, code: str | None = None) -> T:
    """A msgpack body that no signature covers (an answer, the enrolment's outer map)."""
    decoder = _msgpack_decoders.get(type_)
    if decoder is None:
        decoder = _msgpack_decoders[type_] = msgspec.msgpack.Decoder(type_)
    try:
        return decoder.decode(raw)  # type: ignore[no-any-return]  # Decoder[Any] per type
    except msgspec.ValidationError as exc:
        value = _untyped(msgspec.msgpack.decode, raw)
        raise MessageError(explain(type_, exc, value, MSGPACK), code) from None
    except msgspec.DecodeError as exc:
        raise MessageError(f"the body is not valid msgpack ({exc})", code) from None


def decode_query(type_: type[T], query: Mapping[str, str], *, code: str | None = None) -> T:
    """A URL query as `type_`: an integer field takes 1 to 19 ASCII digits (no sign, no
    spaces, no other numerals), then bounds and choices are checked as for a body. Parameters
    the type does not declare are ignored, as the routes ignore them today."""
    hints = typing.get_type_hints(type_, include_extras=True)
    fields: dict[str, object] = {}
    for name in getattr(type_, "__struct_fields__", ()):
        raw = query.get(name)
        if raw is None:
            continue
        if int in members(hints[name]):
            if not _DECIMAL.fullmatch(raw):
                expected = describe(hints[name], QUERY)
                raise MessageError(f"{name}: expected {expected}, got {quote(raw)}", code)
            fields[name] = int(raw)
        else:
            fields[name] = raw
    return _convert(type_, fields, code, QUERY)


def convert(type_: type[T], value: object, *, code: str | None = None) -> T:
    """A body already decoded (the body of a verified signed request) as `type_`."""
    return _convert(type_, value, code, MSGPACK)


def _convert(type_: type[T], value: object, code: str | None, fmt: str) -> T:
    # from msgpack, bytes are bytes: a string is never read as base64
    builtin = (bytes,) if fmt == MSGPACK else ()
    try:
        return msgspec.convert(value, type_, builtin_types=builtin)
    except msgspec.ValidationError as exc:
        raise MessageError(explain(type_, exc, value, fmt), code) from None
    except UnicodeEncodeError:
        pass
    # msgspec cannot name a field whose text holds a lone surrogate where it expected no text
    # (it fails encoding it): find the field with the surrogates as NUL, which every declared
    # text refuses, and show the value as it was sent
    try:
        msgspec.convert(_without_surrogates(value), type_, builtin_types=builtin)
    except msgspec.ValidationError as exc:
        raise MessageError(explain(type_, exc, value, fmt), code) from None
    raise MessageError("the body holds text that is not valid Unicode (a lone surrogate)", code)


def _without_surrogates(value: object) -> object:
    if isinstance(value, str):
        return _SURROGATE.sub("\x00", value)
    if isinstance(value, list):
        return [_without_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {_without_surrogates(k): _without_surrogates(v) for k, v in value.items()}
    return value


def _untyped(decode: Any, raw: bytes) -> Any:
    """The body without a type, to show what a refused field held (UNKNOWN if unreadable)."""
    try:
        return decode(raw)
    except (msgspec.DecodeError, ValueError, RecursionError):
        return UNKNOWN
