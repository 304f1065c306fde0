"""msgspec's ValidationError in the user's words: the field's path, what it must be (from its
declared type and bounds), and what was sent — `gpus: expected an integer from 1 to 64, got
"two"`."""

from __future__ import annotations

import math
import re
import types
import typing
from typing import Any

import msgspec
import msgspec.inspect as mi

from shared.messages.fields import quote

JSON, MSGPACK, QUERY = "json", "msgpack", "query"
MISSING: Any = object()  # the field is not in the body
UNKNOWN: Any = object()  # the body could not be read without its type
_LOCATED = re.compile(r"^(?P<what>.*?)(?: - at `(?P<at>[^`]*)`(?: in `(?P<outer>[^`]*)`)?)?$", re.S)
_SEGMENT = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|(\[\.\.\.\])")
_FIELD = re.compile(r"field `([^`]*)`")
_KEY, _VALUE = "<key>", "<value>"
Segment = str | int


def explain(root: Any, error: msgspec.ValidationError, value: Any, fmt: str) -> str:
    """One sentence for a refused body of type `root`; `value` is the body read without a
    type (MISSING when it could not be), to show what was sent."""
    located = _LOCATED.match(str(error))
    assert located is not None  # the pattern matches any text
    what = located["what"]
    path = _segments(located["outer"] or located["at"] or "$")
    if located["outer"]:
        path.append(_KEY)
    node_type, node_value, labels = _walk(root, path, value)
    label = ".".join(labels).replace(".[", "[")
    if what.startswith("Object missing required field"):
        name = _field_name(what)
        field_type = _struct_fields(node_type).get(name, Any)
        return _sentence(_join(label, name), field_type, MISSING, fmt)
    if what.startswith("Object contains unknown field"):
        known = ", ".join(_struct_fields(node_type))
        name = _field_name(what)
        shown = name if name.isidentifier() else quote(name)
        return f"{_join(label, shown)}: unknown field; the fields are {known}"
    if what.startswith(("Expected", "Invalid", "Integer value out of range")):
        return _sentence(label, node_type, UNKNOWN if secret(node_type) else node_value, fmt)
    # raised by a struct's own check (__post_init__), already naming its field
    return f"{label}.{what}" if label else what


def secret(tp: Any) -> bool:
    """Whether a declared field holds a secret (Meta extra "secret"): a refusal then says
    what it expected, never what was sent."""
    if typing.get_origin(tp) is not typing.Annotated:
        return False
    return any(
        isinstance(meta, msgspec.Meta) and bool((meta.extra or {}).get("secret"))
        for meta in typing.get_args(tp)[1:]
    )


def _sentence(label: str, expected: Any, got: Any, fmt: str) -> str:
    where = label or ("the request body" if fmt == JSON else "the body")
    sent = "" if got is UNKNOWN else f", got {render(got, fmt)}"
    return f"{where}: expected {describe(expected, fmt)}{sent}"


def _join(label: str, name: str) -> str:
    return f"{label}.{name}" if label else name


def _field_name(what: str) -> str:
    found = _FIELD.search(what)
    return found[1] if found else "?"


def _segments(text: str) -> list[Segment]:
    out: list[Segment] = []
    for name, index, _ in _SEGMENT.findall(text[1:]):
        out.append(name if name else int(index) if index else _VALUE)
    return out


# -- walking the declared type and the sent value side by side ----------------------------


def _strip(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def members(tp: Any) -> list[Any]:
    """The alternatives of a union (or the type itself), without null and UNSET."""
    tp = _strip(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [
            m
            for arg in typing.get_args(tp)
            if (m := _strip(arg)) not in (type(None), msgspec.UnsetType)
        ]
    return [tp]


def _struct_fields(tp: Any) -> dict[str, Any]:
    for member in members(tp):
        if isinstance(member, type) and issubclass(member, msgspec.Struct):
            hints = typing.get_type_hints(member, include_extras=True)
            return {name: hints[name] for name in member.__struct_fields__}
    return {}


def _walk(root: Any, path: list[Segment], value: Any) -> tuple[Any, Any, list[str]]:
    tp, labels = root, []
    for segment in path:
        if isinstance(segment, int):
            tp = _item_type(tp, list)
            value = _item(value, segment)
            labels.append(f"[{segment}]")
        elif segment in (_KEY, _VALUE):
            dict_type = next((m for m in members(tp) if typing.get_origin(m) is dict), None)
            key_type, item_type = typing.get_args(dict_type) if dict_type else (Any, Any)
            tp = key_type if segment == _KEY else item_type
            key, value = _first_refused(value, tp, keys=segment == _KEY)
            if segment == _VALUE and key is not MISSING:
                labels.append(str(key))
        else:
            tp = _struct_fields(tp).get(segment, Any)
            value = value.get(segment, MISSING) if type(value) is dict else UNKNOWN
            labels.append(segment)
    return tp, value, labels


def _item(value: Any, index: int) -> Any:
    return value[index] if type(value) is list and index < len(value) else UNKNOWN


def _item_type(tp: Any, origin: type) -> Any:
    for member in members(tp):
        if typing.get_origin(member) is origin:
            return typing.get_args(member)[0]
    return Any


def _first_refused(mapping: Any, tp: Any, keys: bool) -> tuple[Any, Any]:
    """The first (key, shown value) of a sent map whose key, or value, its type refuses."""
    if type(mapping) is not dict:
        return MISSING, UNKNOWN
    for key, item in mapping.items():
        try:
            msgspec.convert(key if keys else item, tp, builtin_types=(bytes,))
        except msgspec.ValidationError:
            return key, key if keys else item
    return MISSING, UNKNOWN


# -- words --------------------------------------------------------------------------------


def describe(tp: Any, fmt: str) -> str:
    """What a declared type accepts, as the end of "expected ..."."""
    try:
        info = mi.type_info(tp)
    except (TypeError, ValueError):
        return "a valid value"
    return _describe(info, fmt)


def _describe(info: mi.Type, fmt: str) -> str:
    if isinstance(info, mi.Metadata):
        expected = (info.extra or {}).get("expected")
        return str(expected) if expected else _describe(info.type, fmt)
    if isinstance(info, mi.IntType):
        return _range("an integer", info.ge, info.gt, info.le, info.lt)
    if isinstance(info, (mi.StrType, mi.BytesType)):
        noun = "a string" if isinstance(info, mi.StrType) else "bytes"
        unit = "characters" if isinstance(info, mi.StrType) else "bytes"
        text = _length(noun, info.min_length, info.max_length, unit)
        pattern = getattr(info, "pattern", None)
        return f"{text} matching {pattern}" if pattern else text
    if isinstance(info, (mi.ListType, mi.DictType)):
        noun, unit = ("a list", "items") if isinstance(info, mi.ListType) else ("a map", "entries")
        return _length(noun, info.min_length, info.max_length, unit)
    if isinstance(info, mi.StructType):
        required = [f.encode_name for f in info.fields if f.required]
        kind = "a JSON object" if fmt == JSON else "a map"
        return f"{kind} with {', '.join(required)}" if required else kind
    if isinstance(info, mi.LiteralType):
        return "one of " + ", ".join(str(v) for v in info.values)
    if isinstance(info, mi.UnionType):
        parts = [_describe(t, fmt) for t in info.types if not isinstance(t, mi.NoneType)]
        nullable = any(isinstance(t, mi.NoneType) for t in info.types)
        # a query parameter left out is the null of its type: not worth saying
        return " or ".join(parts) + (f", or {_null(fmt)}" if nullable and fmt != QUERY else "")
    names = {mi.BoolType: "true or false", mi.FloatType: "a number", mi.NoneType: _null(fmt)}
    return names.get(type(info), "a valid value")


def _range(noun: str, ge: int | None, gt: int | None, le: int | None, lt: int | None) -> str:
    low = ge if ge is not None else None if gt is None else gt + 1
    high = le if le is not None else None if lt is None else lt - 1
    if low is not None and high is not None:
        return f"{noun} from {low} to {high}"
    if low is not None:
        return f"{noun} of at least {low}"
    return f"{noun} of at most {high}" if high is not None else noun


def _length(noun: str, low: int | None, high: int | None, unit: str) -> str:
    if high is not None:
        return f"{noun} of {low} to {high} {unit}" if low else f"{noun} of at most {high} {unit}"
    return f"{noun} of at least {low} {unit}" if low else noun


def _null(fmt: str) -> str:
    return "null" if fmt == JSON else "nil"


def render(value: Any, fmt: str) -> str:
    """What was sent, briefly: a value as it was written, or its kind and size."""
    kind = type(value)
    if value is MISSING:
        return "nothing"
    if value is None:
        return _null(fmt)
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        digits = str(abs(value))
        return str(value) if len(digits) <= 24 else f"a {len(digits)}-digit number"
    if kind is float:
        return "NaN" if math.isnan(value) else "Infinity" if math.isinf(value) else repr(value)
    if kind is str:
        return quote(value)
    if kind is bytes:
        return f"{len(value)} bytes"
    if kind is list:
        return f"a list of {len(value)} items"
    if kind is dict:
        return "a JSON object" if fmt == JSON else "a map"
    return f"a {kind.__name__}"
