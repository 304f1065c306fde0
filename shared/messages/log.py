"""The transparency log's public routes: their query parameters and JSON answers. Entries and
proof hashes are bytes, sent as base64 strings."""

from __future__ import annotations

from typing import Annotated

import msgspec

from shared.messages.fields import INT64_MAX, Count, Message

# the routes read up to 19 digits; a larger index than int64 is beyond any log
Index = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
Hex32 = Annotated[
    str, msgspec.Meta(pattern=r"^[0-9a-fA-F]{64}$", extra={"expected": "64 hex digits"})
]


class EntriesQuery(Message):
    """GET /v1/log/entries?start=&end= (a page may stop early, at most 1000 entries)."""

    start: Annotated[Index, msgspec.Meta(description="first index")]
    end: Annotated[Index, msgspec.Meta(description="index after the last (at most the size)")]


class InclusionQuery(Message):
    """GET /v1/log/proof/inclusion?index=&size="""

    index: Annotated[Index, msgspec.Meta(description="entry index")]
    size: Annotated[Index, msgspec.Meta(description="tree size")]


class ConsistencyQuery(Message):
    """GET /v1/log/proof/consistency?old=&new="""

    old: Annotated[Index, msgspec.Meta(description="older tree size (at least 1)")]
    new: Annotated[Index, msgspec.Meta(description="newer tree size")]


class FindQuery(Message):
    """GET /v1/log/find: exactly one of digest and agent_id."""

    digest: (
        Annotated[Hex32, msgspec.Meta(description="SHA-256 of a receipt envelope, 64 hex digits")]
        | None
    ) = None
    agent_id: Annotated[Hex32, msgspec.Meta(description="an agent id, 64 hex digits")] | None = None


class KeyChanges(Message):
    """The indices of the log_key entries (rotations of the log's key), in log order."""

    indices: list[Count]


class EntriesPage(Message):
    start: Count
    end: Count
    entries: list[bytes]


class InclusionProof(Message):
    """RFC 9162 inclusion proof of entry `index` in the tree of `size` entries."""

    index: Count
    size: Count
    proof: list[bytes]


class ConsistencyProof(Message):
    """RFC 9162 consistency proof from the tree of `old` entries to that of `new`."""

    old: Count
    new: Count
    proof: list[bytes]


class FoundEntry(Message, omit_defaults=True):
    """Where a receipt (by digest) or an agent's key (by agent_id) is in the log."""

    index: Count
    kind: str
    digest: str | msgspec.UnsetType = msgspec.UNSET
    agent_id: str | msgspec.UnsetType = msgspec.UNSET
