"""The entries of the coordinator's transparency log, written by the coordinator, read by auditors.

An entry is the canonical msgpack array `[ENTRY_VERSION, kind, at_ms, body]`; its bytes are the
Merkle leaf, so one entry has one spelling and `decode_entry` refuses any other. Bodies are
positional arrays (the voucher policy is a map with sorted string keys):

    agent_key      [agent_id, public_key (32 bytes), provider_id, provider_uscc]
    enterprise     [enterprise_id, uscc]
    voucher_policy {setting: int | str | bool | None, ...}
    receipt        [receipt envelope as the agent sent it, acknowledgement envelope, [posting, ...]]
    payment        [reference, party_id, amount, [posting, ...]]
    period_close   [period "YYYY-MM", [statement, ...]]
    auction_round  canonical bytes of `shared.auction.round_record(...)`

    posting   = [transfer_id (32 bytes), debit_account, credit_account, amount > 0, code]
    statement = [party_kind, party_id, total, voucher, deferred, due_at_ms | None]

The acknowledgement is the coordinator's countersignature of an accepted receipt, an
"acceptance" envelope over `[receipt digest, lease_id, seq, amount, delta, accepted_at_ms]`,
signed with the same key as the log's checkpoints; `open_acknowledgement` verifies one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple, TypeAlias

from shared import canonical
from shared.auction import AuctionError, round_from_record
from shared.envelope import envelope_digest, max_envelope_bytes, open_envelope
from shared.errors import EncodingError, SuanliError
from shared.identity import PUBLIC_KEY_SIZE, PublicKey

__all__ = [
    "ACKNOWLEDGEMENT_KIND",
    "AGENT_KEY",
    "AUCTION_ROUND",
    "ENTERPRISE",
    "ENTRY_VERSION",
    "KINDS",
    "MAX_ENTRY_BYTES",
    "PAYMENT",
    "PERIOD_CLOSE",
    "RECEIPT",
    "USAGE_CHARGE_CODES",
    "VOUCHER_POLICY",
    "Acknowledgement",
    "AgentKey",
    "AuctionRoundEntry",
    "Body",
    "EnterpriseEntry",
    "Entry",
    "LogEntryError",
    "PaymentEntry",
    "PeriodCloseEntry",
    "Posting",
    "ReceiptEntry",
    "Statement",
    "decode_entry",
    "encode_entry",
    "open_acknowledgement",
]

ENTRY_VERSION = 1
# An auction round lists every candidate offer with its GPUs; a city-sized round is megabytes.
MAX_ENTRY_BYTES = 8 << 20
MAX_TEXT = 256
MAX_POSTINGS = 64
MAX_STATEMENTS = 1_000_000
MAX_POLICY_SETTINGS = 256
HASH_SIZE = 32
_INT_MAX = 2**63 - 1
_PERIOD = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")

AGENT_KEY = "agent_key"
ENTERPRISE = "enterprise"
VOUCHER_POLICY = "voucher_policy"
RECEIPT = "receipt"
PAYMENT = "payment"
PERIOD_CLOSE = "period_close"
AUCTION_ROUND = "auction_round"
KINDS = (AGENT_KEY, ENTERPRISE, VOUCHER_POLICY, RECEIPT, PAYMENT, PERIOD_CLOSE, AUCTION_ROUND)

ACKNOWLEDGEMENT_KIND = "acceptance"
# The postings of a receipt that move money to the provider (the voucher part and the part the
# enterprise pays later); together they are the receipt's charge, its delta. A receipt's other
# postings move quotas (the company's voucher cap, the enterprise's credit) on other ledgers.
USAGE_CHARGE_CODES = ("usage_voucher", "usage_deferred")


class LogEntryError(SuanliError):
    """A log entry is malformed: not canonical, of an unknown kind, or with a bad body."""

    code = "bad_log_entry"


# -- bodies ------------------------------------------------------------------------------------


class AgentKey(NamedTuple):
    """An agent's enrolled key: the log's own record of which key may sign whose receipts."""

    agent_id: str
    public_key: bytes
    provider_id: str
    provider_uscc: str

    def to_wire(self) -> list[Any]:
        return list(self)


class EnterpriseEntry(NamedTuple):
    enterprise_id: str
    uscc: str

    def to_wire(self) -> list[Any]:
        return list(self)


class Posting(NamedTuple):
    """One ledger transfer as logged: it debits one account and credits another."""

    transfer_id: bytes
    debit_account: str
    credit_account: str
    amount: int
    code: str

    def to_wire(self) -> list[Any]:
        return list(self)


class ReceiptEntry(NamedTuple):
    """An accepted receipt: the agent's envelope, the coordinator's countersignature, the money."""

    envelope: bytes
    acknowledgement: bytes
    postings: tuple[Posting, ...]

    @property
    def digest(self) -> bytes:
        """SHA-256 of the receipt envelope: how chains, acknowledgements and `find` name it."""
        return envelope_digest(self.envelope)

    def to_wire(self) -> list[Any]:
        return [self.envelope, self.acknowledgement, [p.to_wire() for p in self.postings]]


class PaymentEntry(NamedTuple):
    """Money received from an enterprise or paid out to a provider, with its transfers."""

    reference: str
    party_id: str
    amount: int
    postings: tuple[Posting, ...]

    def to_wire(self) -> list[Any]:
        return [self.reference, self.party_id, self.amount, [p.to_wire() for p in self.postings]]


class Statement(NamedTuple):
    party_kind: str
    party_id: str
    total: int
    voucher: int
    deferred: int
    due_at_ms: int | None

    def to_wire(self) -> list[Any]:
        return list(self)


class PeriodCloseEntry(NamedTuple):
    period: str
    statements: tuple[Statement, ...]

    def to_wire(self) -> list[Any]:
        return [self.period, [s.to_wire() for s in self.statements]]


class AuctionRoundEntry(NamedTuple):
    """A round as the coordinator ran it: `record` is canonical bytes of `round_record(...)`."""

    record: bytes

    def decoded(self) -> Any:
        """The round record, ready for `shared.auction.replay`."""
        return canonical.decode(self.record, MAX_ENTRY_BYTES)

    def to_wire(self) -> bytes:
        return self.record


Body: TypeAlias = (
    AgentKey | EnterpriseEntry | dict[str, Any] | ReceiptEntry | PaymentEntry | PeriodCloseEntry
    | AuctionRoundEntry
)


class Entry(NamedTuple):
    kind: str
    at_ms: int
    body: Body


# -- encoding ----------------------------------------------------------------------------------


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
    _int(at_ms, "the entry's at_ms")
    return Entry(kind, at_ms, _PARSERS[kind](body))


def _agent_key(body: Any) -> AgentKey:
    agent_id, public_key, provider_id, provider_uscc = _array(body, 4, "an agent_key body")
    _text(agent_id, "agent_id")
    if type(public_key) is not bytes or len(public_key) != PUBLIC_KEY_SIZE:
        raise LogEntryError(f"an agent's public key is {PUBLIC_KEY_SIZE} bytes")
    _text(provider_id, "provider_id")
    _text(provider_uscc, "provider_uscc")
    try:
        derived = PublicKey(public_key).agent_id
    except SuanliError as exc:
        raise LogEntryError(f"agent {agent_id}: {exc.detail}") from None
    if derived != agent_id:
        raise LogEntryError(f"agent_id {agent_id} is not the SHA-256 of its public key")
    return AgentKey(agent_id, public_key, provider_id, provider_uscc)


def _enterprise(body: Any) -> EnterpriseEntry:
    enterprise_id, uscc = _array(body, 2, "an enterprise body")
    return EnterpriseEntry(_text(enterprise_id, "enterprise_id"), _text(uscc, "uscc"))


def _voucher_policy(body: Any) -> dict[str, Any]:
    if type(body) is not dict or len(body) > MAX_POLICY_SETTINGS:
        raise LogEntryError(
            f"a voucher_policy body is a map of at most {MAX_POLICY_SETTINGS} settings")
    for name, setting in body.items():
        _text(name, "a voucher policy setting's name")
        if setting is not None and type(setting) not in (int, str, bool):
            raise LogEntryError(f"voucher policy setting {name} must be an integer, text, "
                                f"a boolean or nil")
    return dict(body)


def _receipt(body: Any) -> ReceiptEntry:
    envelope, acknowledgement, postings = _array(body, 3, "a receipt body")
    _envelope(envelope, "receipt")
    _envelope(acknowledgement, ACKNOWLEDGEMENT_KIND)
    return ReceiptEntry(envelope, acknowledgement, _postings(postings))


def _payment(body: Any) -> PaymentEntry:
    reference, party_id, amount, postings = _array(body, 4, "a payment body")
    _text(reference, "a payment's reference")
    _text(party_id, "a payment's party_id")
    _int(amount, "a payment's amount", low=1)
    return PaymentEntry(reference, party_id, amount, _postings(postings))


def _period_close(body: Any) -> PeriodCloseEntry:
    period, statements = _array(body, 2, "a period_close body")
    if type(period) is not str or not _PERIOD.fullmatch(period):
        raise LogEntryError(f"a period is written YYYY-MM, not {period!r:.40}")
    if type(statements) is not list or len(statements) > MAX_STATEMENTS:
        raise LogEntryError(f"a period close lists at most {MAX_STATEMENTS} statements")
    parsed = []
    for item in statements:
        party_kind, party_id, total, voucher, deferred, due = _array(item, 6, "a statement")
        _text(party_kind, "a statement's party_kind")
        _text(party_id, "a statement's party_id")
        for amount, what in ((total, "total"), (voucher, "voucher"), (deferred, "deferred")):
            _int(amount, f"a statement's {what}")
        if due is not None:
            _int(due, "a statement's due_at_ms")
        parsed.append(Statement(party_kind, party_id, total, voucher, deferred, due))
    return PeriodCloseEntry(period, tuple(parsed))


def _auction_round(body: Any) -> AuctionRoundEntry:
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


_PARSERS: dict[str, Callable[[Any], Body]] = {
    AGENT_KEY: _agent_key,
    ENTERPRISE: _enterprise,
    VOUCHER_POLICY: _voucher_policy,
    RECEIPT: _receipt,
    PAYMENT: _payment,
    PERIOD_CLOSE: _period_close,
    AUCTION_ROUND: _auction_round,
}


def _postings(value: Any) -> tuple[Posting, ...]:
    if type(value) is not list or len(value) > MAX_POSTINGS:
        raise LogEntryError(f"postings are an array of at most {MAX_POSTINGS} transfers")
    postings = []
    for item in value:
        transfer_id, debit, credit, amount, code = _array(item, 5, "a posting")
        if type(transfer_id) is not bytes or len(transfer_id) != HASH_SIZE:
            raise LogEntryError(f"a posting's transfer_id is {HASH_SIZE} bytes")
        _text(debit, "a posting's debit_account")
        _text(credit, "a posting's credit_account")
        _int(amount, "a posting's amount", low=1)
        _text(code, "a posting's code")
        postings.append(Posting(transfer_id, debit, credit, amount, code))
    return tuple(postings)


def _envelope(value: Any, kind: str) -> None:
    if type(value) is not bytes or not 0 < len(value) <= max_envelope_bytes(kind):
        raise LogEntryError(f"a logged {kind} envelope is 1 to {max_envelope_bytes(kind)} bytes")


def _array(value: Any, length: int, what: str) -> list[Any]:
    if type(value) is not list or len(value) != length:
        raise LogEntryError(f"{what} is an array of {length} values")
    return value


def _text(value: Any, what: str) -> str:
    if type(value) is not str or not 0 < len(value) <= MAX_TEXT:
        raise LogEntryError(f"{what} must be text of 1 to {MAX_TEXT} characters")
    return value


def _int(value: Any, what: str, low: int = 0) -> int:
    if type(value) is not int or not low <= value <= _INT_MAX:
        raise LogEntryError(f"{what} must be an integer from {low} to {_INT_MAX}")
    return value


# -- acknowledgements --------------------------------------------------------------------------


class Acknowledgement(NamedTuple):
    """What the coordinator countersigned: this receipt, its cumulative amount and the delta."""

    receipt_digest: bytes
    lease_id: str
    seq: int
    amount: int
    delta: int
    accepted_at_ms: int


def open_acknowledgement(envelope: bytes, log_key: PublicKey) -> Acknowledgement:
    """Verify an acknowledgement against the log's key and parse it.

    Raises EnvelopeError (SignatureError for a signature that does not verify), EncodingError
    for a payload that is not canonical, or LogEntryError for a payload of the wrong shape.
    """
    payload = open_envelope(envelope, ACKNOWLEDGEMENT_KIND, log_key).payload
    digest, lease_id, seq, amount, delta, accepted_at_ms = _array(payload, 6, "an acknowledgement")
    if type(digest) is not bytes or len(digest) != HASH_SIZE:
        raise LogEntryError(f"an acknowledgement names the receipt by its {HASH_SIZE}-byte digest")
    _text(lease_id, "an acknowledgement's lease_id")
    for number, what in ((seq, "seq"), (amount, "amount"), (delta, "delta"),
                         (accepted_at_ms, "accepted_at_ms")):
        _int(number, f"an acknowledgement's {what}")
    return Acknowledgement(digest, lease_id, seq, amount, delta, accepted_at_ms)
