"""Receipts in the log, and the acknowledgements that answer them.

    receipt          [receipt envelope as the agent sent it, [posting, ...]]
    acknowledgement  the "acceptance" envelope answering a batch of receipts

A receipt entry's postings are the usage posted for it. The receipts of one lease accepted in
one batch are posted together, on the last of them: its postings charge the amount the lease's
receipts added since its previous posting (the postings whose codes are
`shared.ledger_names.USAGE_CHARGE_CODES`), and the receipts before it carry none. (Entries
written before batches were acknowledged as a whole held a third value between the two, the
receipt's own acknowledgement; they still decode.)

The acknowledgement is the coordinator's countersignature of a batch of accepted receipts, an
"acceptance" envelope signed with the same key as the log's checkpoints over

    [ACKNOWLEDGEMENT_VERSION, agent_id, accepted_at_ms, [acknowledged, ...]]
    acknowledged = [receipt digest, lease_id, seq, amount, delta, log_index, [transfer_id, ...]]

naming for each receipt its cumulative amount, what it added (delta), the log entry that holds
it and the ledger transfers posted on it. `open_acknowledgement` verifies one. Each is logged
after the receipts it names, so auditors check the coordinator's word to agents against the log.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import shared.canonical as canonical
from shared.envelope import (
    envelope_digest,
    max_envelope_bytes,
    open_envelope,
    seal,
    unverified_payload,
)
from shared.identity import PrivateKey, PublicKey
from shared.log_entries.fields import HASH_SIZE, MAX_POSTINGS, array, integer, text
from shared.log_entries.fields import envelope as envelope_field
from shared.log_entries.kinds import ACKNOWLEDGEMENT_KIND, ACKNOWLEDGEMENT_VERSION, LogEntryError
from shared.log_entries.postings import Posting, parse_postings

MAX_ACKNOWLEDGED = 500


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


class AcknowledgementEntry(NamedTuple):
    """The countersigned acknowledgement a batch's agent got, as it got it (an envelope)."""

    envelope: bytes

    def to_wire(self) -> bytes:
        return self.envelope


def parse_receipt(body: Any) -> ReceiptEntry:
    if type(body) is list and len(body) == 3:  # written with its own acknowledgement
        receipt, acknowledgement, postings = body
        envelope_field(acknowledgement, ACKNOWLEDGEMENT_KIND)
    else:
        receipt, postings = array(body, 2, "a receipt body")
    envelope_field(receipt, "receipt")
    return ReceiptEntry(receipt, parse_postings(postings))


def parse_acknowledgement_entry(body: Any) -> AcknowledgementEntry:
    return AcknowledgementEntry(envelope_field(body, ACKNOWLEDGEMENT_KIND))


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
    version, agent_id, accepted_at_ms, items = array(payload, 4, "an acknowledgement")
    if type(version) is not int or version != ACKNOWLEDGEMENT_VERSION:
        raise LogEntryError(
            f"acknowledgement version {version!r:.20} is not {ACKNOWLEDGEMENT_VERSION}"
        )
    text(agent_id, "an acknowledgement's agent_id")
    integer(accepted_at_ms, "an acknowledgement's accepted_at_ms")
    if type(items) is not list or len(items) > MAX_ACKNOWLEDGED:
        raise LogEntryError(f"an acknowledgement lists at most {MAX_ACKNOWLEDGED} receipts")
    receipts = []
    for item in items:
        digest, lease_id, seq, amount, delta, log_index, transfer_ids = array(
            item, 7, "an acknowledged receipt"
        )
        if type(digest) is not bytes or len(digest) != HASH_SIZE:
            raise LogEntryError(
                f"an acknowledgement names each receipt by its {HASH_SIZE}-byte digest"
            )
        text(lease_id, "an acknowledged receipt's lease_id")
        for number, what in (
            (seq, "seq"),
            (amount, "amount"),
            (delta, "delta"),
            (log_index, "log_index"),
        ):
            integer(number, f"an acknowledged receipt's {what}")
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
