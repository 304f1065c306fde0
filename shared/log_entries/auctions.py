"""Auction rounds in the log, as the coordinator ran them, for auditors to replay: an
auction_round body is the canonical bytes of `shared.auction.round_record(...)`."""

from __future__ import annotations

from typing import Any, NamedTuple

import shared.canonical as canonical
from shared.auction import AuctionError, round_from_record
from shared.errors import EncodingError
from shared.log_entries.kinds import MAX_ENTRY_BYTES, LogEntryError


class AuctionRoundEntry(NamedTuple):
    """A round as the coordinator ran it: `record` is canonical bytes of `round_record(...)`."""

    record: bytes

    def decoded(self) -> Any:
        """The round record, ready for `shared.auction.replay`."""
        return canonical.decode(self.record, MAX_ENTRY_BYTES)

    def to_wire(self) -> bytes:
        return self.record


def parse_auction_round(body: Any) -> AuctionRoundEntry:
    if type(body) is not bytes:
        raise LogEntryError("an auction_round body is the canonical bytes of a round record")
    entry = AuctionRoundEntry(body)
    try:
        round_from_record(entry.decoded())
    except EncodingError as exc:
        raise LogEntryError(f"the auction round record is not canonical: {exc.detail}") from None
    except AuctionError as exc:
        raise LogEntryError(f"the auction round record is malformed: {exc.detail}") from None
    return entry
