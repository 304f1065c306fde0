"""The entries of the coordinator's transparency log, written by the coordinator, read by auditors.

An entry is the canonical msgpack array `[ENTRY_VERSION, kind, at_ms, body]`; its bytes are the
Merkle leaf, so one entry has one spelling and `decode_entry` refuses any other (`codec`).
Bodies are positional arrays (the voucher policy is a map with sorted string keys), one family
to a module, each module's docstring giving its bodies' layout:

    registrations  agent_key, enterprise, voucher_policy
    receipts       receipt, acknowledgement (and the countersigned acknowledgement itself)
    postings       payment, period_close (and the ledger postings receipts and payments carry)
    auctions       auction_round
    leases         lease_award, lease_event
    keys           log_key (rotations of the log's own key)

`kinds` names the kinds and holds the format's versions and LogEntryError; `fields` the checks
every body's fields pass.
"""

from shared.log_entries.auctions import AuctionRoundEntry
from shared.log_entries.codec import (
    Body,
    Entry,
    decode_entry,
    encode_entry,
    encode_receipt_entry,
)
from shared.log_entries.keys import (
    LogKeyChange,
    LogKeyEntry,
    open_log_key,
    read_log_key,
    seal_log_key,
)
from shared.log_entries.kinds import (
    ACKNOWLEDGEMENT,
    ACKNOWLEDGEMENT_KIND,
    ACKNOWLEDGEMENT_VERSION,
    AGENT_KEY,
    AUCTION_ROUND,
    ENTERPRISE,
    ENTRY_VERSION,
    KINDS,
    LEASE_AWARD,
    LEASE_ENDED,
    LEASE_EVENT,
    LEASE_EVENTS,
    LEASE_STARTED,
    LEASE_STOP_REQUESTED,
    LOG_KEY,
    LOG_KEY_KIND,
    MAX_ENTRY_BYTES,
    PAYMENT,
    PERIOD_CLOSE,
    RECEIPT,
    VOUCHER_POLICY,
    LogEntryError,
)
from shared.log_entries.leases import LeaseAwardEntry, LeaseEventEntry
from shared.log_entries.postings import PaymentEntry, PeriodCloseEntry, Posting, Statement
from shared.log_entries.receipts import (
    AcknowledgedReceipt,
    Acknowledgement,
    AcknowledgementEntry,
    ReceiptEntry,
    open_acknowledgement,
    read_acknowledgement,
    seal_acknowledgement,
)
from shared.log_entries.registrations import AgentKey, EnterpriseEntry

__all__ = [
    "ACKNOWLEDGEMENT",
    "ACKNOWLEDGEMENT_KIND",
    "ACKNOWLEDGEMENT_VERSION",
    "AGENT_KEY",
    "AUCTION_ROUND",
    "ENTERPRISE",
    "ENTRY_VERSION",
    "KINDS",
    "LEASE_AWARD",
    "LEASE_ENDED",
    "LEASE_EVENT",
    "LEASE_EVENTS",
    "LEASE_STARTED",
    "LEASE_STOP_REQUESTED",
    "LOG_KEY",
    "LOG_KEY_KIND",
    "MAX_ENTRY_BYTES",
    "PAYMENT",
    "PERIOD_CLOSE",
    "RECEIPT",
    "VOUCHER_POLICY",
    "AcknowledgedReceipt",
    "Acknowledgement",
    "AcknowledgementEntry",
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
