"""An enterprise's standing on the ledger: its accounts and entitlement opened at registration,
the USCC its entitlement hangs on, whether its company may be subsidised, and its credit limit
and the figures a credit refusal quotes."""

from __future__ import annotations

from coordinator.billing.accounts import get_accounts
from coordinator.billing.amounts import check_amount, yuan
from coordinator.billing.chart import ensure_year, enterprise_specs, need_accounts
from coordinator.billing.errors import (
    CreditExceeded,
    IdempotencyConflict,
    InvalidTransfer,
    LimitExceeded,
    UnknownEnterprise,
)
from coordinator.billing.linked_sets import create_transfers
from coordinator.billing.policy import VoucherPolicy
from coordinator.billing.records import Transfer, transfer_id
from coordinator.billing.sql import savepoint
from coordinator.storage import Session
from shared.ledger_names import (
    CREDIT_LIMIT,
    credit_account,
    credit_limit_cause,
    credit_line_account,
    receivable_account,
)
from shared.uscc import validate_uscc


def open_enterprise_accounts(
    db: Session, enterprise_id: str, uscc: str, policy: VoucherPolicy, now_ms: int
) -> None:
    """Give a newly registered enterprise its ledger accounts and its entitlement; idempotent.

    Opens its receivable and credit accounts with the policy's default credit limit, and its
    company's cap for the policy year (one per USCC: two enterprise ids with one USCC would
    share it). Nobody applies: registration is the entitlement.
    """
    code = validate_uscc(uscc)
    if type(enterprise_id) is not str or not enterprise_id:
        raise InvalidTransfer("an enterprise id is non-empty text")
    with savepoint(db, "vouchers_open"):
        row = db.conn.execute(
            "SELECT uscc FROM ledger_enterprises WHERE enterprise_id = ?", [enterprise_id]
        ).fetchone()
        if row is not None and row[0] != code:
            raise IdempotencyConflict(
                f"enterprise {enterprise_id} already has its entitlement under USCC {row[0]}, "
                f"not {code}"
            )
        if row is None:
            db.conn.execute(
                "INSERT INTO ledger_enterprises (enterprise_id, uscc, opened_at_ms) "
                "VALUES (?, ?, ?)",
                [enterprise_id, code, now_ms],
            )
        accounts = need_accounts(db, enterprise_specs(enterprise_id), now_ms)
        line = accounts[credit_line_account(enterprise_id)]
        if (
            line.debits_posted == 0
            and line.credits_posted == 0
            and policy.default_credit_limit_micro_yuan > 0
        ):
            cause = credit_limit_cause(enterprise_id)
            create_transfers(
                db,
                [
                    Transfer(
                        transfer_id(cause, "opening"),
                        line.id,
                        credit_account(enterprise_id),
                        policy.default_credit_limit_micro_yuan,
                        CREDIT_LIMIT,
                        cause,
                        at_ms=now_ms,
                    )
                ],
            )
        ensure_year(db, code, policy, now_ms)


def enterprise_uscc(db: Session, enterprise_id: str, policy: VoucherPolicy, now_ms: int) -> str:
    """The USCC the enterprise's entitlement hangs on, opening its accounts if registration
    predates them."""
    row = db.conn.execute(
        "SELECT uscc FROM ledger_enterprises WHERE enterprise_id = ?", [enterprise_id]
    ).fetchone()
    if row is not None:
        return str(row[0])
    found = db.conn.execute("SELECT uscc FROM enterprises WHERE id = ?", [enterprise_id]).fetchone()
    if found is None:
        raise UnknownEnterprise(f"there is no enterprise {enterprise_id}")
    open_enterprise_accounts(db, enterprise_id, found[0], policy, now_ms)
    return str(found[0])


def opened_uscc(db: Session, enterprise_id: str) -> str:
    row = db.conn.execute(
        "SELECT uscc FROM ledger_enterprises WHERE enterprise_id = ?", [enterprise_id]
    ).fetchone()
    if row is None:
        raise UnknownEnterprise(f"enterprise {enterprise_id} has no ledger accounts")
    return str(row[0])


def is_provider(db: Session, uscc: str) -> bool:
    return (
        db.conn.execute("SELECT 1 FROM providers WHERE uscc = ? LIMIT 1", [uscc]).fetchone()
        is not None
    )


def subsidy_allowed(db: Session, uscc: str, policy: VoucherPolicy) -> bool:
    return policy.providers_may_be_subsidised or not is_provider(db, uscc)


def set_credit_limit(db: Session, enterprise_id: str, amount: int, now_ms: int) -> int:
    """Set the enterprise's credit limit; returns it. Lowering it below what is owed and
    reserved is refused (`CreditExceeded`): collect or wait for the jobs first."""
    check_amount(amount, "a credit limit", allow_zero=True)
    opened_uscc(db, enterprise_id)
    with savepoint(db, "vouchers_credit"):
        accounts = need_accounts(db, enterprise_specs(enterprise_id), now_ms)
        line = accounts[credit_line_account(enterprise_id)]
        current = line.debits_posted - line.credits_posted
        if amount == current:
            return amount
        cause = credit_limit_cause(enterprise_id)
        leg = f"{line.debits_posted}/{line.credits_posted}->{amount}"
        credit = credit_account(enterprise_id)
        debit_id, credit_id = (line.id, credit) if amount > current else (credit, line.id)
        try:
            create_transfers(
                db,
                [
                    Transfer(
                        transfer_id(cause, leg),
                        debit_id,
                        credit_id,
                        abs(amount - current),
                        CREDIT_LIMIT,
                        cause,
                        at_ms=now_ms,
                    )
                ],
            )
        except LimitExceeded:
            held = credit_figures(db, enterprise_id)
            raise CreditExceeded(
                f"the credit limit of {enterprise_id} cannot be lowered to {yuan(amount)}: it owes "
                f"{yuan(held['deferred_balance'])} and has {yuan(held['reserved'])} reserved for "
                f"running jobs"
            ) from None
    return amount


def credit_figures(db: Session, enterprise_id: str) -> dict[str, int]:
    accounts = get_accounts(
        db,
        [
            credit_account(enterprise_id),
            credit_line_account(enterprise_id),
            receivable_account(enterprise_id),
        ],
    )
    credit = accounts.get(credit_account(enterprise_id))
    line = accounts.get(credit_line_account(enterprise_id))
    receivable = accounts.get(receivable_account(enterprise_id))
    limit = line.debits_posted - line.credits_posted if line else 0
    owed = receivable.debits_posted - receivable.credits_posted if receivable else 0
    reserved = credit.debits_pending if credit else 0
    headroom = credit.debit_headroom if credit else 0
    return {
        "credit_limit": limit,
        "deferred_balance": owed,
        "reserved": reserved,
        "headroom": headroom,
        "paid": receivable.credits_posted if receivable else 0,
    }


def credit_exceeded(db: Session, enterprise_id: str, amount: int, what: str) -> CreditExceeded:
    """The refusal, quoting the enterprise's credit figures, of `what` (of `amount`)."""
    held = credit_figures(db, enterprise_id)
    return CreditExceeded(
        f"{what} of {yuan(amount)} does not fit the credit of enterprise {enterprise_id}: limit "
        f"{yuan(held['credit_limit'])}, owed {yuan(held['deferred_balance'])}, reserved for jobs "
        f"{yuan(held['reserved'])}, free {yuan(max(held['headroom'], 0))}"
    )
