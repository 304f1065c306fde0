"""The entries of the coordinator's transparency log, written by the coordinator, read by auditors.

An entry is the canonical msgpack array `[ENTRY_VERSION, kind, at_ms, body]`; its bytes are the
Merkle leaf, so one entry has one spelling and `decode_entry` refuses any other. Bodies are
positional arrays (the voucher policy is a map with sorted string keys):

    agent_key      [agent_id, public_key (32 bytes), provider_id, provider_uscc]
    enterprise     [enterprise_id, uscc]
    voucher_policy {setting: int | str | bool | None, ...}
    receipt        [receipt envelope as the agent sent it, [posting, ...]]
    payment        [reference, party_id, amount, [posting, ...]]
    period_close   [period "YYYY-MM", [statement, ...]]
    auction_round  canonical bytes of `shared.auction.round_record(...)`
    acknowledgement  the "acceptance" envelope answering a batch of receipts (below)
    lease_award    [lease_id, job_id, agent_id, [gpu_uuid, ...], price_per_gpu_hour,
                    max_duration_ms, stop_grace_ms]          (at_ms: the award)
    lease_event    [lease_id, event, reason | None, exit_code | None, report | None]
    log_key        a "log_key" envelope signed by the log key in force until this entry (below)

A lease event is `started` (report: the agent's signed status request saying so),
`stop_requested` (reason: cancelled, revoked, lease_ended), or `ended` (reason: exited with the
agent's signed exit report, agent_lost, start_deadline, failed, overrun, agent_revoked); with
the award they fix the lease's billable window (`shared.billing_window`).

    posting   = [transfer_id (32 bytes), debit_account, credit_account, amount > 0, code]
    statement = [party_kind, party_id, total, voucher, deferred, due_at_ms | None]

A receipt entry's postings are the usage posted for it. The receipts of one lease accepted in
one batch are posted together, on the last of them: its postings charge the amount the lease's
receipts added since its previous posting, and the receipts before it carry none. (Entries
written before batches were acknowledged as a whole held a third value between the two, the
receipt's own acknowledgement; they still decode.)

The acknowledgement is the coordinator's countersignature of a batch of accepted receipts, an
"acceptance" envelope signed with the same key as the log's checkpoints over

    [ACKNOWLEDGEMENT_VERSION, agent_id, accepted_at_ms, [acknowledged, ...]]
    acknowledged = [receipt digest, lease_id, seq, amount, delta, log_index, [transfer_id, ...]]

naming for each receipt its cumulative amount, what it added (delta), the log entry that holds
it and the ledger transfers posted on it. `open_acknowledgement` verifies one. Each is logged
after the receipts it names, so auditors check the coordinator's word to agents against the log.

A log_key entry rotates the log's key: its envelope is signed by the key in force so far (the
old key) over

    [origin, old public key (32 bytes), new public key (32 bytes)]

and from the next entry on, checkpoints and acknowledgements are signed by the new key. An
auditor who trusted the old key follows the chain with `open_log_key`; the origin, the log's
name in its checkpoints, stays the same across rotations.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple, TypeAlias

import msgpack

from shared import canonical
from shared.auction import AuctionError, round_from_record
from shared.billing_window import LeaseTerms
from shared.envelope import (
    envelope_digest,
    max_envelope_bytes,
    open_envelope,
    seal,
    unverified_payload,
)
from shared.errors import EncodingError, SuanliError
from shared.identity import PUBLIC_KEY_SIZE, PrivateKey, PublicKey

__all__ = [
    "ACKNOWLEDGEMENT",
    "ACKNOWLEDGEMENT_KIND",
    "ACKNOWLEDGEMENT_VERSION",
    "AGENT_KEY",
    "LEASE_AWARD",
    "LEASE_ENDED",
    "LEASE_EVENT",
    "LEASE_EVENTS",
    "LEASE_STARTED",
    "LEASE_STOP_REQUESTED",
    "LOG_KEY",
    "LOG_KEY_KIND",
    "AUCTION_ROUND",
    "ENTERPRISE",
    "ENTRY_VERSION",
    "KINDS",
    "MAX_ENTRY_BYTES",
    "PAYMENT",
    "PERIOD_CLOSE",
    "RECEIPT",
    "VOUCHER_POLICY",
    "AcknowledgedReceipt",
    "AcknowledgementEntry",
    "Acknowledgement",
    "AgentKey",
    "AuctionRoundEntry",
    "Body",
    "EnterpriseEntry",
    "Entry",
    "LeaseAwardEntry",
    "LeaseEventEntry",
    "LogEntryError",
    "LogKeyChange",
    "LogKeyEntry",
    "PaymentEntry",
    "PeriodCloseEntry",
    "Posting",
    "ReceiptEntry",
    "Statement",
    "decode_entry",
    "encode_entry",
    "encode_receipt_entry",
    "open_acknowledgement",
    "open_log_key",
    "read_acknowledgement",
    "read_log_key",
    "seal_acknowledgement",
    "seal_log_key",
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
ACKNOWLEDGEMENT = "acknowledgement"
LEASE_AWARD = "lease_award"
LEASE_EVENT = "lease_event"
LOG_KEY = "log_key"
KINDS = (
    AGENT_KEY,
    ENTERPRISE,
    VOUCHER_POLICY,
    RECEIPT,
    PAYMENT,
    PERIOD_CLOSE,
    AUCTION_ROUND,
    ACKNOWLEDGEMENT,
    LEASE_AWARD,
    LEASE_EVENT,
    LOG_KEY,
)
LEASE_STARTED = "started"
LEASE_STOP_REQUESTED = "stop_requested"
LEASE_ENDED = "ended"
LEASE_EVENTS = (LEASE_STARTED, LEASE_STOP_REQUESTED, LEASE_ENDED)
MAX_LEASE_GPUS = 64

LOG_KEY_KIND = "log_key"
ACKNOWLEDGEMENT_KIND = "acceptance"
ACKNOWLEDGEMENT_VERSION = 2
MAX_ACKNOWLEDGED = 500
# The postings of a receipt that move money to the provider (the voucher part and the part the
# enterprise pays later); together they are the receipt's charge, its delta. A receipt's other
# postings move quotas (the company's voucher cap, the enterprise's credit) on other ledgers.


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
    """An accepted receipt: the agent's envelope and the usage posted on it (maybe none)."""

    envelope: bytes
    postings: tuple[Posting, ...]

    @property
    def digest(self) -> bytes:
        """SHA-256 of the receipt envelope: how chains, acknowledgements and `find` name it."""
        return envelope_digest(self.envelope)

    def to_wire(self) -> list[Any]:
        return [self.envelope, [p.to_wire() for p in self.postings]]


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


class AcknowledgementEntry(NamedTuple):
    """The countersigned acknowledgement a batch's agent got, as it got it (an envelope)."""

    envelope: bytes

    def to_wire(self) -> bytes:
        return self.envelope


class LeaseAwardEntry(NamedTuple):
    """The terms of a lease as awarded; the entry's at_ms is the award's moment."""

    lease_id: str
    job_id: str
    agent_id: str
    gpu_uuids: tuple[str, ...]
    price_per_gpu_hour: int
    max_duration_ms: int
    stop_grace_ms: int

    def terms(self, awarded_at_ms: int) -> LeaseTerms:
        return LeaseTerms(
            self.lease_id,
            self.job_id,
            self.agent_id,
            self.gpu_uuids,
            self.price_per_gpu_hour,
            awarded_at_ms,
            self.max_duration_ms,
            self.stop_grace_ms,
        )

    def to_wire(self) -> list[Any]:
        return [
            self.lease_id,
            self.job_id,
            self.agent_id,
            list(self.gpu_uuids),
            self.price_per_gpu_hour,
            self.max_duration_ms,
            self.stop_grace_ms,
        ]


class LeaseEventEntry(NamedTuple):
    """A fact that opens or closes a lease's billable window; the entry's at_ms is its moment."""

    lease_id: str
    event: str
    reason: str | None = None
    exit_code: int | None = None
    report: bytes | None = None  # the agent's signed status request, when the agent said it

    def to_wire(self) -> list[Any]:
        return list(self)


class LogKeyEntry(NamedTuple):
    """A rotation of the log's key: the old key's signed word for the new one (an envelope)."""

    envelope: bytes

    @property
    def digest(self) -> bytes:
        return envelope_digest(self.envelope)

    def to_wire(self) -> bytes:
        return self.envelope


class LogKeyChange(NamedTuple):
    """What a log_key envelope says: the log (origin) moves from old_key to new_key."""

    origin: str
    old_key: bytes
    new_key: bytes

    def to_payload(self) -> list[Any]:
        return [self.origin, self.old_key, self.new_key]


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


def encode_receipt_entry(at_ms: int, body: ReceiptEntry) -> tuple[bytes, Entry]:
    """`encode_entry` for the hot path, a receipt entry, also giving the decoded entry: the
    body's parts are checked as `decode_entry` checks them and packed directly (positional
    arrays of bytes, text and integers have one msgpack spelling), without encoding and
    decoding it twice."""
    _int(at_ms, "the entry's at_ms")
    _envelope(body.envelope, "receipt")
    if len(body.postings) > MAX_POSTINGS:
        raise LogEntryError(f"postings are an array of at most {MAX_POSTINGS} transfers")
    for posting in body.postings:
        if type(posting.transfer_id) is not bytes or len(posting.transfer_id) != HASH_SIZE:
            raise LogEntryError(f"a posting's transfer_id is {HASH_SIZE} bytes")
        for text in (posting.debit_account, posting.credit_account, posting.code):
            _text(text, "a posting's account or code")
        _int(posting.amount, "a posting's amount", low=1)
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
            f"a voucher_policy body is a map of at most {MAX_POLICY_SETTINGS} settings"
        )
    for name, setting in body.items():
        _text(name, "a voucher policy setting's name")
        if setting is not None and type(setting) not in (int, str, bool):
            raise LogEntryError(
                f"voucher policy setting {name} must be an integer, text, a boolean or nil"
            )
    return dict(body)


def _receipt(body: Any) -> ReceiptEntry:
    if type(body) is list and len(body) == 3:  # written with its own acknowledgement
        envelope, acknowledgement, postings = body
        _envelope(acknowledgement, ACKNOWLEDGEMENT_KIND)
    else:
        envelope, postings = _array(body, 2, "a receipt body")
    _envelope(envelope, "receipt")
    return ReceiptEntry(envelope, _postings(postings))


def _acknowledgement_entry(body: Any) -> AcknowledgementEntry:
    return AcknowledgementEntry(_envelope(body, ACKNOWLEDGEMENT_KIND))


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


def _lease_award(body: Any) -> LeaseAwardEntry:
    lease_id, job_id, agent_id, uuids, price, max_duration, grace = _array(
        body, 7, "a lease_award body"
    )
    if type(uuids) is not list or not 0 < len(uuids) <= MAX_LEASE_GPUS:
        raise LogEntryError(f"a lease names 1 to {MAX_LEASE_GPUS} GPUs")
    return LeaseAwardEntry(
        _text(lease_id, "lease_id"),
        _text(job_id, "job_id"),
        _text(agent_id, "agent_id"),
        tuple(_text(uuid, "a GPU UUID") for uuid in uuids),
        _int(price, "price_per_gpu_hour"),
        _int(max_duration, "max_duration_ms"),
        _int(grace, "stop_grace_ms"),
    )


def _lease_event(body: Any) -> LeaseEventEntry:
    lease_id, event, reason, exit_code, report = _array(body, 5, "a lease_event body")
    if event not in LEASE_EVENTS:
        raise LogEntryError(f"a lease event is one of {', '.join(LEASE_EVENTS)}, not {event!r:.40}")
    if reason is not None:
        _text(reason, "a lease event's reason")
    if exit_code is not None and (type(exit_code) is not int or not -(2**31) <= exit_code < 2**31):
        raise LogEntryError("a lease event's exit_code is a 32-bit integer")
    if report is not None:
        _envelope(report, "request")
    return LeaseEventEntry(_text(lease_id, "lease_id"), event, reason, exit_code, report)


def _log_key_entry(body: Any) -> LogKeyEntry:
    read_log_key(_envelope(body, LOG_KEY_KIND))
    return LogKeyEntry(body)


_PARSERS: dict[str, Callable[[Any], Body]] = {
    AGENT_KEY: _agent_key,
    ENTERPRISE: _enterprise,
    VOUCHER_POLICY: _voucher_policy,
    RECEIPT: _receipt,
    PAYMENT: _payment,
    PERIOD_CLOSE: _period_close,
    AUCTION_ROUND: _auction_round,
    ACKNOWLEDGEMENT: _acknowledgement_entry,
    LEASE_AWARD: _lease_award,
    LEASE_EVENT: _lease_event,
    LOG_KEY: _log_key_entry,
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


def _envelope(value: Any, kind: str) -> bytes:
    if type(value) is not bytes or not 0 < len(value) <= max_envelope_bytes(kind):
        raise LogEntryError(f"a logged {kind} envelope is 1 to {max_envelope_bytes(kind)} bytes")
    return value


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


class AcknowledgedReceipt(NamedTuple):
    """One receipt of an acknowledgement: what was accepted, where it is logged, what it posted."""

    digest: bytes
    lease_id: str
    seq: int
    amount: int
    delta: int
    log_index: int
    transfer_ids: tuple[bytes, ...]

    def to_wire(self) -> list[Any]:
        return [
            self.digest,
            self.lease_id,
            self.seq,
            self.amount,
            self.delta,
            self.log_index,
            list(self.transfer_ids),
        ]


class Acknowledgement(NamedTuple):
    """What the coordinator countersigned: these receipts of this agent, accepted at this time."""

    agent_id: str
    accepted_at_ms: int
    receipts: tuple[AcknowledgedReceipt, ...]

    def to_payload(self) -> list[Any]:
        return [
            ACKNOWLEDGEMENT_VERSION,
            self.agent_id,
            self.accepted_at_ms,
            [r.to_wire() for r in self.receipts],
        ]

    def find(self, digest: bytes) -> AcknowledgedReceipt | None:
        return next((r for r in self.receipts if r.digest == digest), None)


def seal_acknowledgement(acknowledgement: Acknowledgement, key: PrivateKey) -> bytes:
    return seal(ACKNOWLEDGEMENT_KIND, acknowledgement.to_payload(), key)


def open_acknowledgement(envelope: bytes, log_key: PublicKey) -> Acknowledgement:
    """Verify an acknowledgement against the log's key and parse it.

    Raises EnvelopeError (SignatureError for a signature that does not verify), EncodingError
    for a payload that is not canonical, or LogEntryError for a payload of the wrong shape.
    """
    return _acknowledgement(open_envelope(envelope, ACKNOWLEDGEMENT_KIND, log_key).payload)


def read_acknowledgement(envelope: bytes) -> Acknowledgement:
    """Parse an acknowledgement without checking its signature: for an agent deciding which
    spooled receipts it answers. Raises as `open_acknowledgement` does for a bad shape."""
    return _acknowledgement(
        canonical.decode(
            unverified_payload(envelope, ACKNOWLEDGEMENT_KIND),
            max_envelope_bytes(ACKNOWLEDGEMENT_KIND),
        )
    )


def _acknowledgement(payload: Any) -> Acknowledgement:
    version, agent_id, accepted_at_ms, items = _array(payload, 4, "an acknowledgement")
    if type(version) is not int or version != ACKNOWLEDGEMENT_VERSION:
        raise LogEntryError(
            f"acknowledgement version {version!r:.20} is not {ACKNOWLEDGEMENT_VERSION}"
        )
    _text(agent_id, "an acknowledgement's agent_id")
    _int(accepted_at_ms, "an acknowledgement's accepted_at_ms")
    if type(items) is not list or len(items) > MAX_ACKNOWLEDGED:
        raise LogEntryError(f"an acknowledgement lists at most {MAX_ACKNOWLEDGED} receipts")
    receipts = []
    for item in items:
        digest, lease_id, seq, amount, delta, log_index, transfer_ids = _array(
            item, 7, "an acknowledged receipt"
        )
        if type(digest) is not bytes or len(digest) != HASH_SIZE:
            raise LogEntryError(
                f"an acknowledgement names each receipt by its {HASH_SIZE}-byte digest"
            )
        _text(lease_id, "an acknowledged receipt's lease_id")
        for number, what in (
            (seq, "seq"),
            (amount, "amount"),
            (delta, "delta"),
            (log_index, "log_index"),
        ):
            _int(number, f"an acknowledged receipt's {what}")
        if (
            type(transfer_ids) is not list
            or len(transfer_ids) > MAX_POSTINGS
            or any(type(t) is not bytes or len(t) != HASH_SIZE for t in transfer_ids)
        ):
            raise LogEntryError(
                f"an acknowledged receipt lists at most {MAX_POSTINGS} transfer ids "
                f"of {HASH_SIZE} bytes"
            )
        receipts.append(
            AcknowledgedReceipt(
                digest, lease_id, seq, amount, delta, log_index, tuple(transfer_ids)
            )
        )
    return Acknowledgement(agent_id, accepted_at_ms, tuple(receipts))


# -- log key rotations -------------------------------------------------------------------------


def seal_log_key(origin: str, new_key: PublicKey, old_key: PrivateKey) -> bytes:
    """The old key's signature over the new one, for the log named `origin`."""
    change = LogKeyChange(origin, old_key.public.raw, new_key.raw)
    _log_key_change(change.to_payload())
    return seal(LOG_KEY_KIND, change.to_payload(), old_key)


def open_log_key(envelope: bytes, in_force: PublicKey) -> LogKeyChange:
    """Verify a rotation against the key in force before it and parse it.

    Raises EnvelopeError (SignatureError when another key signed it), EncodingError, or
    LogEntryError when the payload is malformed or names another old key than its signer.
    """
    change = _log_key_change(open_envelope(envelope, LOG_KEY_KIND, in_force).payload)
    if change.old_key != in_force.raw:
        raise LogEntryError(
            "the log_key rotation names another old key than the one that signed it"
        )
    return change


def read_log_key(envelope: bytes) -> LogKeyChange:
    """Parse a rotation without checking its signature (to find the log's first key)."""
    try:
        payload = canonical.decode(
            unverified_payload(envelope, LOG_KEY_KIND), max_envelope_bytes(LOG_KEY_KIND)
        )
    except SuanliError as exc:
        raise LogEntryError(f"the log_key envelope is malformed: {exc.detail}") from None
    return _log_key_change(payload)


def _log_key_change(payload: Any) -> LogKeyChange:
    origin, old_key, new_key = _array(payload, 3, "a log_key rotation")
    _text(origin, "a log_key rotation's origin")
    for value, what in ((old_key, "old"), (new_key, "new")):
        if type(value) is not bytes or len(value) != PUBLIC_KEY_SIZE:
            raise LogEntryError(f"a log_key rotation's {what} key is {PUBLIC_KEY_SIZE} bytes")
    if old_key == new_key:
        raise LogEntryError("a log_key rotation must name a new key, not the old one again")
    return LogKeyChange(origin, old_key, new_key)
