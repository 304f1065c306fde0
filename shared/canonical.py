"""Canonical msgpack: the one encoding of a payload that Suanli signs, hashes and accepts.

Payloads hold only ints (int64/uint64 range), bytes, strings, bools, None, lists and maps
with string keys. Maps are encoded with their keys sorted, so a payload has exactly one
encoding; `decode` re-encodes what it read and refuses bytes that differ.
"""

from __future__ import annotations

from typing import Any

import msgpack

from shared.errors import EncodingError

MAX_DEPTH = 16
INT_MIN = -(2**63)
INT_MAX = 2**64 - 1
DEFAULT_MAX_BYTES = 1 << 20


def _reject_ext(code: int, data: bytes) -> Any:
    raise EncodingError(f"msgpack extension type {code} is not allowed in a payload")


def _check(obj: object, depth: int, require_sorted: bool) -> bool:
    """Refuse what a payload may not hold; True if it holds a map (whose keys need sorting)."""
    if depth > MAX_DEPTH:
        raise EncodingError(f"payload nests deeper than {MAX_DEPTH} levels")
    kind = type(obj)
    if kind is list or kind is tuple:
        has_map = False
        for item in obj:  # type: ignore[attr-defined]  # exact type() check, not isinstance
            item_kind = type(item)
            if item_kind is int:
                if not INT_MIN <= item <= INT_MAX:
                    raise EncodingError("an integer in the payload is outside the 64-bit range")
            elif item_kind not in _SCALARS:
                has_map = _check(item, depth + 1, require_sorted) or has_map
        return has_map
    if kind is dict:
        previous = None
        for key, value in obj.items():  # type: ignore[attr-defined]  # exact type() check
            if type(key) is not str:
                raise EncodingError("map keys in a payload must be strings")
            if require_sorted and previous is not None and key <= previous:
                raise EncodingError("map keys in a payload must be sorted and unique")
            previous = key
            if depth >= MAX_DEPTH:  # the value, scalar or not, would be one level too deep
                raise EncodingError(f"payload nests deeper than {MAX_DEPTH} levels")
            value_kind = type(value)
            if value_kind is int:
                if not INT_MIN <= value <= INT_MAX:
                    raise EncodingError("an integer in the payload is outside the 64-bit range")
            elif value_kind not in _SCALARS:  # scalars inline: a call per value costs the most
                _check(value, depth + 1, require_sorted)
        return True
    if kind is int:
        if not INT_MIN <= obj <= INT_MAX:  # type: ignore[operator]  # exact type() check
            raise EncodingError("an integer in the payload is outside the 64-bit range")
    elif kind is float:
        raise EncodingError("floats are not allowed in a payload; use integers")
    elif kind not in _SCALARS:
        raise EncodingError(f"a {kind.__name__} cannot be part of a payload")
    return False


_SCALARS = frozenset({str, bytes, bool, type(None)})


def _sorted_maps(obj: Any) -> Any:
    kind = type(obj)
    if kind is dict:
        return {key: _sorted_maps(obj[key]) for key in sorted(obj)}
    if kind is list or kind is tuple:
        return [_sorted_maps(item) for item in obj]
    return obj


def encode(obj: object) -> bytes:
    """The canonical bytes of a payload; raises EncodingError for anything not allowed."""
    has_map = _check(obj, 0, False)
    encoded = msgpack.packb(_sorted_maps(obj) if has_map else obj, use_bin_type=True)
    return bytes(encoded)  # msgpack is untyped: its packb returns bytes


def decode(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """Decode canonical bytes; refuses trailing bytes, floats, extensions, non-canonical forms."""
    if not isinstance(data, bytes):
        raise EncodingError("a payload must be given as bytes")
    if len(data) > max_bytes:
        raise EncodingError(f"payload is {len(data)} bytes; the limit is {max_bytes}")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            ext_hook=_reject_ext,
            timestamp=0,
        )
    except EncodingError:
        raise
    except msgpack.ExtraData as exc:
        raise EncodingError("payload has trailing bytes after the msgpack value") from exc
    except UnicodeDecodeError as exc:
        raise EncodingError("a string in the payload is not valid UTF-8") from exc
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        reason = str(exc) or type(exc).__name__
        raise EncodingError(f"payload is not valid msgpack ({reason})") from exc
    _check(obj, 0, True)
    if msgpack.packb(obj, use_bin_type=True) != data:
        raise EncodingError("payload is not in canonical form (re-encoding gives other bytes)")
    return obj
