"""The kinds of log entry, the versions and limits of the format, and the error a malformed
entry raises."""

from __future__ import annotations

from shared.errors import SuanliError

ENTRY_VERSION = 1
# An auction round lists every candidate offer with its GPUs; a city-sized round is megabytes.
MAX_ENTRY_BYTES = 8 << 20

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

# the envelope kinds of what the coordinator signs for the log
LOG_KEY_KIND = "log_key"
ACKNOWLEDGEMENT_KIND = "acceptance"
ACKNOWLEDGEMENT_VERSION = 2


class LogEntryError(SuanliError):
    """A log entry is malformed: not canonical, of an unknown kind, or with a bad body."""

    code = "bad_log_entry"
