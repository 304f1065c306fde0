"""Why billing refuses something: the ledger's refusals and the vouchers' and payments' own.

Each is an `ApiError` with its HTTP status and code, so a refusal reaches a caller as one
sentence; whatever raised it wrote nothing.
"""

from __future__ import annotations

from coordinator.billing.records import Transfer
from coordinator.errors import ApiError
from shared.errors import SuanliError


class VoucherPolicyError(SuanliError):
    """The [vouchers] table of the coordinator's configuration is invalid."""

    code = "bad_voucher_policy"


# -- the ledger's refusals -------------------------------------------------------------------


class LedgerError(ApiError):
    """The ledger refused an operation; nothing of it was written."""

    status = 409
    code = "ledger_refused"


class InvalidTransfer(LedgerError):
    """A transfer is malformed (amount, id, accounts, kind)."""

    status = 422
    code = "invalid_transfer"


class IdempotencyConflict(LedgerError):
    """An id is already taken by a record with other fields: a retry changed what it asks."""

    code = "idempotency_conflict"


class UnknownAccount(LedgerError):
    """A transfer names an account the ledger does not have."""

    status = 404
    code = "unknown_account"


class LimitExceeded(LedgerError):
    """A transfer would take an account past its balance limit."""

    code = "limit_exceeded"

    def __init__(self, detail: str, *, account: str, flag: str, transfer: Transfer) -> None:
        super().__init__(detail)
        self.account = account
        self.flag = flag
        self.transfer = transfer


class PendingError(LedgerError):
    """A post or void does not match an open pending transfer."""

    code = "bad_pending"


class LedgerOverflow(LedgerError):
    """A balance would pass the largest integer SQLite stores."""

    code = "ledger_overflow"


# -- vouchers, credit, payments and statements -----------------------------------------------


class CreditExceeded(LedgerError):
    """The deferred part would pass the enterprise's credit limit; revoke the lease."""

    status = 402
    code = "credit_exceeded"


class Suspended(LedgerError):
    """The enterprise has a statement unpaid past its due date and grace; it may not start jobs."""

    status = 402
    code = "suspended"


class Overpayment(LedgerError):
    """A payment is larger than what the enterprise owes."""

    status = 422
    code = "overpayment"


class UnknownEnterprise(LedgerError):
    """No ledger accounts (nor coordinator record) exist for this enterprise."""

    status = 404
    code = "unknown_enterprise"


class UnknownReceipt(LedgerError):
    """Usage was posted for a digest that is not an accepted receipt."""

    status = 422
    code = "unknown_receipt"


class PeriodClosed(LedgerError):
    """Usage was posted into a statement period that is already closed."""

    code = "period_closed"


class PeriodNotEnded(LedgerError):
    """A period cannot be closed before its last millisecond has passed."""

    code = "period_not_ended"


class BadPeriod(LedgerError):
    """A statement period is not written YYYY-MM."""

    status = 422
    code = "bad_period"
