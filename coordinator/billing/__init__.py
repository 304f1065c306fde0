"""Billing: the ledger (accounts and immutable transfers in integer micro-yuan, after
TigerBeetle) and what it records: public compute vouchers and "use first, pay later".

Each charge is split into the part the voucher pool pays and the part the enterprise pays
later (`policy`); a job's reservation holds what it may need when it is accepted
(`reservations`); each accepted receipt's usage is posted as one linked set of transfers named
after the receipt (`usage`); payments restore credit and payouts pay providers (`payments`);
closing a month issues statements that must be paid (`statements`); `check_invariants` finds
every way the ledger could be wrong (`invariants`). The chart of accounts is in `chart`, the
vocabulary (ledgers, codes, account names) in `shared.ledger_names`.

Every function here is synchronous, takes the coordinator's `Session`, runs
inside the caller's transaction (the writer thread's, or `coordinator.storage.transaction`) and is
atomic by its own savepoint: it either does everything or raises and leaves nothing behind.
"""

from coordinator.billing.accounts import get_account, open_account
from coordinator.billing.amounts import MAX_AMOUNT
from coordinator.billing.chart import open_fiscal_year
from coordinator.billing.enterprises import open_enterprise_accounts, set_credit_limit
from coordinator.billing.errors import (
    BadPeriod,
    CreditExceeded,
    IdempotencyConflict,
    InvalidTransfer,
    LedgerError,
    LedgerOverflow,
    LimitExceeded,
    Overpayment,
    PendingError,
    PeriodClosed,
    PeriodNotEnded,
    Suspended,
    UnknownAccount,
    UnknownEnterprise,
    UnknownReceipt,
    VoucherPolicyError,
)
from coordinator.billing.invariants import check_invariants
from coordinator.billing.linked_sets import create_transfers
from coordinator.billing.payments import Payment, record_payment, record_payout
from coordinator.billing.pending import pending_remaining
from coordinator.billing.periods import DAY_MS, period_bounds, period_of
from coordinator.billing.policy import (
    BPS,
    CAP_EXHAUSTED,
    COVERED,
    NO_COVERAGE,
    NOT_ELIGIBLE,
    OUTSIDE_FISCAL_YEAR,
    POOL_EXHAUSTED,
    SELF_DEALING,
    Split,
    VoucherPolicy,
    load_voucher_policy,
    split_charge,
)
from coordinator.billing.records import Account, Transfer, transfer_id
from coordinator.billing.reports import enterprise_account, pool_status, provider_earnings
from coordinator.billing.reservations import (
    Reservation,
    cover_self_dealing,
    load_reservation,
    reserve_job,
    settle_job,
)
from coordinator.billing.statements import (
    PeriodClose,
    Statement,
    close_period,
    enterprise_statements,
    is_suspended,
)
from coordinator.billing.transfers import get_transfers, transfers_for_receipt
from coordinator.billing.usage import Posting, job_charges, post_usage, post_usages
from coordinator.billing.usage_legs import Usage

__all__ = [
    "BPS",
    "CAP_EXHAUSTED",
    "COVERED",
    "DAY_MS",
    "MAX_AMOUNT",
    "NOT_ELIGIBLE",
    "NO_COVERAGE",
    "OUTSIDE_FISCAL_YEAR",
    "POOL_EXHAUSTED",
    "SELF_DEALING",
    "Account",
    "BadPeriod",
    "CreditExceeded",
    "IdempotencyConflict",
    "InvalidTransfer",
    "LedgerError",
    "LedgerOverflow",
    "LimitExceeded",
    "Overpayment",
    "Payment",
    "PendingError",
    "PeriodClose",
    "PeriodClosed",
    "PeriodNotEnded",
    "Posting",
    "Reservation",
    "Split",
    "Statement",
    "Suspended",
    "Transfer",
    "UnknownAccount",
    "UnknownEnterprise",
    "UnknownReceipt",
    "Usage",
    "VoucherPolicy",
    "VoucherPolicyError",
    "check_invariants",
    "close_period",
    "cover_self_dealing",
    "create_transfers",
    "enterprise_account",
    "enterprise_statements",
    "get_account",
    "get_transfers",
    "is_suspended",
    "job_charges",
    "load_reservation",
    "load_voucher_policy",
    "open_account",
    "open_enterprise_accounts",
    "open_fiscal_year",
    "pending_remaining",
    "period_bounds",
    "period_of",
    "pool_status",
    "post_usage",
    "post_usages",
    "provider_earnings",
    "record_payment",
    "record_payout",
    "reserve_job",
    "set_credit_limit",
    "settle_job",
    "split_charge",
    "transfer_id",
    "transfers_for_receipt",
]
