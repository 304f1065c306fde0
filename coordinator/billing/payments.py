"""Money in and out: an enterprise's payments, which restore its credit, and payouts to a
provider of what it has earned; each idempotent by its reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coordinator.billing.accounts import get_account
from coordinator.billing.amounts import check_amount, yuan
from coordinator.billing.chart import BANK_SPEC, earnings_specs, enterprise_specs, need_accounts
from coordinator.billing.enterprises import credit_figures, opened_uscc
from coordinator.billing.errors import (
    IdempotencyConflict,
    InvalidTransfer,
    LedgerError,
    LimitExceeded,
    Overpayment,
)
from coordinator.billing.linked_sets import create_transfers
from coordinator.billing.records import Transfer, transfer_id
from coordinator.billing.sql import savepoint
from coordinator.billing.transfers import get_transfers
from coordinator.storage import Session
from shared.ledger_names import (
    BANK,
    CREDIT_USED,
    PAYMENT,
    PAYMENT_CREDIT,
    PAYOUT,
    credit_account,
    earnings_account,
    payment_cause,
    payout_cause,
    receivable_account,
)

MAX_REFERENCE = 200


@dataclass(frozen=True)
class Payment:
    reference: str
    party_id: str
    amount: int
    at_ms: int
    transfer_ids: tuple[bytes, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "party_id": self.party_id,
            "amount_micro_yuan": self.amount,
            "at_ms": self.at_ms,
            "transfer_ids": [t.hex() for t in self.transfer_ids],
        }


def _check_reference(reference: object) -> str:
    if (
        type(reference) is not str
        or not 0 < len(reference) <= MAX_REFERENCE
        or not reference.isprintable()
    ):
        raise InvalidTransfer(f"a payment reference is 1 to {MAX_REFERENCE} printable characters")
    return reference


def _repeat(db: Session, transfers: list[Transfer], what: str) -> list[Transfer]:
    """create_transfers, with a retry's conflict said in the caller's words."""
    try:
        return create_transfers(db, transfers)
    except IdempotencyConflict:
        first = get_transfers(db, [transfers[0].id]).get(transfers[0].id)
        if first is None:
            raise
        raise IdempotencyConflict(
            f"{what} was already recorded differently: {yuan(first.amount)} from "
            f"{first.debit_account} to {first.credit_account}"
        ) from None


def record_payment(
    db: Session, enterprise_id: str, amount: int, reference: str, now_ms: int
) -> Payment:
    """Record money received from an enterprise; it restores as much of its credit.

    Idempotent by reference: the same reference with the same enterprise and amount is a no-op
    returning the first record; with others, `IdempotencyConflict`. A payment larger than what
    the enterprise owes is refused (`Overpayment`) by the receivable's balance limit.
    Statements are paid oldest first.
    """
    check_amount(amount, "a payment")
    reference = _check_reference(reference)
    opened_uscc(db, enterprise_id)
    cause = payment_cause(reference)
    legs = [
        Transfer(
            transfer_id(cause, "receivable"),
            BANK,
            receivable_account(enterprise_id),
            amount,
            PAYMENT,
            cause,
            at_ms=now_ms,
        ),
        Transfer(
            transfer_id(cause, "credit"),
            CREDIT_USED,
            credit_account(enterprise_id),
            amount,
            PAYMENT_CREDIT,
            cause,
            at_ms=now_ms,
        ),
    ]
    with savepoint(db, "vouchers_payment"):
        need_accounts(
            db,
            [*enterprise_specs(enterprise_id), BANK_SPEC],
            now_ms,
        )
        try:
            stored = _repeat(db, legs, f"payment {reference!r}")
        except LimitExceeded:
            owed = credit_figures(db, enterprise_id)["deferred_balance"]
            raise Overpayment(
                f"payment {reference!r} of {yuan(amount)} is more than the "
                f"{yuan(owed)} enterprise {enterprise_id} owes"
            ) from None
    return Payment(reference, enterprise_id, amount, stored[0].at_ms, tuple(t.id for t in stored))


def record_payout(
    db: Session, provider_id: str, amount: int, reference: str, now_ms: int
) -> Payment:
    """Record money paid out to a provider; never more than it has earned.

    Idempotent by reference."""
    check_amount(amount, "a payout")
    reference = _check_reference(reference)
    cause = payout_cause(reference)
    legs = [
        Transfer(
            transfer_id(cause, "earnings"),
            earnings_account(provider_id),
            BANK,
            amount,
            PAYOUT,
            cause,
            at_ms=now_ms,
        )
    ]
    with savepoint(db, "vouchers_payout"):
        need_accounts(db, earnings_specs(provider_id), now_ms)
        try:
            stored = _repeat(db, legs, f"payout {reference!r}")
        except LimitExceeded:
            balance = get_account(db, earnings_account(provider_id))
            left = balance.debit_headroom if balance else 0
            raise LedgerError(
                f"payout {reference!r} of {yuan(amount)} is more than the "
                f"{yuan(left)} provider {provider_id} has earned and not been paid"
            ) from None
    return Payment(reference, provider_id, amount, stored[0].at_ms, (stored[0].id,))
