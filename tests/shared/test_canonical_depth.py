"""Where canonical msgpack stops nesting: the same bound for a map's values as for a list's
items, whether the value is a scalar or not (scalars are checked inline, without a call)."""

from __future__ import annotations

from typing import Any

import pytest

from shared import canonical
from shared.errors import EncodingError


def _maps(depth: int, leaf: Any) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize("leaf", [1, "s", None, True, b"b"])
def test_a_scalar_under_sixteen_maps_is_the_deepest_allowed(leaf: Any) -> None:
    allowed = _maps(canonical.MAX_DEPTH, leaf)
    assert canonical.decode(canonical.encode(allowed)) == allowed
    too_deep = _maps(canonical.MAX_DEPTH + 1, leaf)
    with pytest.raises(EncodingError, match="nests deeper"):
        canonical.encode(too_deep)


@pytest.mark.parametrize(
    ("value", "refusal"),
    [
        ({"a": 2**64}, "64-bit range"),
        ({"a": -(2**63) - 1}, "64-bit range"),
        ({"a": 1.5}, "floats"),
        ({"a": {"b": [1, {"c": 0.5}]}}, "floats"),
        ({"a": object()}, "cannot be part of a payload"),
    ],
)
def test_a_map_value_is_checked_like_a_list_item(value: Any, refusal: str) -> None:
    with pytest.raises(EncodingError, match=refusal):
        canonical.encode(value)
