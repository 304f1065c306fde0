"""An entry's one spelling: `[ENTRY_VERSION, kind, at_ms, body]` as canonical msgpack, encoded
here and decoded (and refused in any other spelling) here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, TypeAlias

import msgpack

import shared.canonical as canonical
from shared.errors import EncodingError
from shared.log_entries.auctions import AuctionRoundEntry, parse_auction_round
from shared.log_entries.fields import envelope, integer
from shared.log_entries.keys import LogKeyEntry, parse_log_key_entry
from shared.log_entries.kinds import (
    ACKNOWLEDGEMENT,
    AGENT_KEY,
    AUCTION_ROUND,
    ENTERPRISE,
    ENTRY_VERSION,
    KINDS,
    LEASE_AWARD,
    LEASE_EVENT,
    LOG_KEY,
    MAX_ENTRY_BYTES,
    PAYMENT,
    PERIOD_CLOSE,
    RECEIPT,
    VOUCHER_POLICY,
    LogEntryError,
)
from shared.log_entries.leases import (
    LeaseAwardEntry,
    LeaseEventEntry,
    parse_lease_award,
    parse_lease_event,
)
from shared.log_entries.postings import (
    PaymentEntry,
    PeriodCloseEntry,
    check_postings,
    parse_payment,
    parse_period_close,
)
from shared.log_entries.receipts import (
    AcknowledgementEntry,
    ReceiptEntry,
    parse_acknowledgement_entry,
    parse_receipt,
)
from shared.log_entries.registrations import (
    AgentKey,
    EnterpriseEntry,
    parse_agent_key,
    parse_enterprise,
    parse_voucher_policy,
)

Body: TypeAlias = (
    AgentKey
    | EnterpriseEntry
    | dict[str, Any]
    | ReceiptEntry
    | PaymentEntry
    | PeriodCloseEntry
    | AuctionRoundEntry
    | AcknowledgementEntry
    | LeaseAwardEntry
    | LeaseEventEntry
    | LogKeyEntry
)


class Entry(NamedTuple):
    kind: str
    at_ms: int
    body: Body


_PARSERS: dict[str, Callable[[Any], Body]] = {
    AGENT_KEY: parse_agent_key,
    ENTERPRISE: parse_enterprise,
    VOUCHER_POLICY: parse_voucher_policy,
    RECEIPT: parse_receipt,
    PAYMENT: parse_payment,
    PERIOD_CLOSE: parse_period_close,
    AUCTION_ROUND: parse_auction_round,
    ACKNOWLEDGEMENT: parse_acknowledgement_entry,
    LEASE_AWARD: parse_lease_award,
    LEASE_EVENT: parse_lease_event,
    LOG_KEY: parse_log_key_entry,
}


def encode_entry(kind: str, at_ms: int, body: Any) -> bytes:
    """The canonical bytes of an entry; `body` is one of the body types or its wire form.

    The result is decoded again before it is returned, so nothing that `decode_entry` would
    refuse can ever be logged.
    """
    wire = body.to_wire() if hasattr(body, "to_wire") else body
    try:
        data = canonical.encode([ENTRY_VERSION, kind, at_ms, wire])
    except EncodingError as exc:
        raise LogEntryError(f"a {kind!s:.40} entry cannot be encoded: {exc.detail}") from None
    decode_entry(data)
    return data


def encode_receipt_entry(at_ms: int, body: ReceiptEntry) -> tuple[bytes, Entry]:
    """`encode_entry` for the hot path, a receipt entry, also giving the decoded entry: the
    body's parts are checked as `decode_entry` checks them and packed directly (positional
    arrays of bytes, text and integers have one msgpack spelling), without encoding and
    decoding it twice."""
    integer(at_ms, "the entry's at_ms")
    envelope(body.envelope, "receipt")
    check_postings(body.postings)
    data = msgpack.packb([ENTRY_VERSION, RECEIPT, at_ms, body.to_wire()], use_bin_type=True)
    if len(data) > MAX_ENTRY_BYTES:
        raise LogEntryError(f"the entry is {len(data)} bytes; the limit is {MAX_ENTRY_BYTES}")
    return data, Entry(RECEIPT, at_ms, body)


def decode_entry(data: bytes) -> Entry:
    """Parse and validate an entry's bytes; raises LogEntryError saying what is wrong."""
    try:
        value = canonical.decode(data, MAX_ENTRY_BYTES)
    except EncodingError as exc:
        raise LogEntryError(f"the entry is not canonical msgpack: {exc.detail}") from None
    if type(value) is not list or len(value) != 4:
        raise LogEntryError("an entry is an array [version, kind, at_ms, body]")
    version, kind, at_ms, body = value
    if type(version) is not int or version != ENTRY_VERSION:
        raise LogEntryError(f"entry version {version!r} is not {ENTRY_VERSION}")
    if type(kind) is not str or kind not in _PARSERS:
        raise LogEntryError(f"entry kind {kind!r:.60} is not one of {', '.join(KINDS)}")
    integer(at_ms, "the entry's at_ms")
    return Entry(kind, at_ms, _PARSERS[kind](body))
