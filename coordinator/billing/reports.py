"""What billing shows its parties: the year's pool, an enterprise's whole money picture
(voucher, credit, reservations, statements), and a provider's earnings."""

from __future__ import annotations

from typing import Any

from coordinator.billing.accounts import get_account
from coordinator.billing.enterprises import credit_figures, opened_uscc, subsidy_allowed
from coordinator.billing.policy import VoucherPolicy
from coordinator.billing.reservations import load_reservation
from coordinator.billing.statements import (
    PROVIDER,
    enterprise_statements,
    is_suspended,
    statements_of,
)
from coordinator.storage import Session
from shared.ledger_names import (
    CAP,
    cap_account,
    earnings_account,
    entitlements_account,
    pool_account,
)


def pool_status(db: Session, policy: VoucherPolicy) -> dict[str, int]:
    """The policy year's pool: granted (funded), used by vouchers, held for accepted jobs,
    remaining (what new jobs may still count on); and the caps granted."""
    year = policy.fiscal_year
    pool = get_account(db, pool_account(year))
    granted = pool.credits_posted if pool else 0
    used = pool.debits_posted if pool else 0
    entitlements = get_account(db, entitlements_account(year))
    companies = db.conn.execute(
        "SELECT COUNT(*) FROM ledger_accounts WHERE kind = ? AND id LIKE ?",
        [CAP, cap_account(year, "%")],  # every company's cap of the year
    ).fetchone()[0]
    return {
        "fiscal_year": year,
        "granted": granted,
        "used": used,
        "held": pool.debits_pending if pool else 0,
        "remaining": pool.debit_headroom if pool else 0,
        "policy_total": policy.pool_total_micro_yuan,
        "companies": companies,
        "entitlements_granted": entitlements.debits_posted if entitlements else 0,
    }


def enterprise_account(
    db: Session, enterprise_id: str, policy: VoucherPolicy, now_ms: int
) -> dict[str, Any]:
    """Everything an enterprise sees of its money: voucher, credit, reservations, statements."""
    uscc = opened_uscc(db, enterprise_id)
    year = policy.fiscal_year
    cap = get_account(db, cap_account(year, uscc))
    cap_total = max(cap.credits_posted if cap else 0, policy.per_company_cap_micro_yuan)
    cap_used = cap.debits_posted if cap else 0
    cap_held = cap.debits_pending if cap else 0
    eligible = subsidy_allowed(db, uscc, policy)
    figures = credit_figures(db, enterprise_id)
    reservations = []
    for row in db.conn.execute(
        "SELECT job_id FROM ledger_reservations WHERE enterprise_id = ? ORDER BY at_ms, job_id",
        [enterprise_id],
    ):
        found = load_reservation(db, row[0])
        if found is not None and found.held:
            reservations.append(found.to_dict())
    statements = enterprise_statements(db, enterprise_id, now_ms)
    billed = sum(s["outstanding_micro_yuan"] for s in statements)
    suspended, why = is_suspended(db, enterprise_id, now_ms)
    pool = pool_status(db, policy)
    return {
        "enterprise_id": enterprise_id,
        "uscc": uscc,
        "fiscal_year": year,
        "voucher": {
            "eligible": eligible,
            "cap_micro_yuan": cap_total,
            "used_micro_yuan": cap_used,
            "held_micro_yuan": cap_held,
            "remaining_micro_yuan": max(cap_total - cap_used - cap_held, 0) if eligible else 0,
            "coverage_bps": policy.coverage_bps,
        },
        "pool_remaining_micro_yuan": pool["remaining"]
        if pool["granted"]
        else policy.pool_total_micro_yuan,
        "deferred_balance_micro_yuan": figures["deferred_balance"],
        "unbilled_micro_yuan": figures["deferred_balance"] - billed,
        "paid_micro_yuan": figures["paid"],
        "credit_limit_micro_yuan": figures["credit_limit"],
        "reserved_micro_yuan": figures["reserved"],
        "headroom_micro_yuan": figures["headroom"],
        "reservations": reservations,
        "statements": statements,
        "suspended": suspended,
        "suspended_reason": why if suspended else None,
    }


def provider_earnings(db: Session, provider_id: str) -> dict[str, Any]:
    """What a provider earned (voucher and deferred parts), was paid out, and its statements."""
    row = db.conn.execute(
        "SELECT COALESCE(SUM(amount), 0), COALESCE(SUM(voucher), 0), COALESCE(SUM(deferred), 0), "
        "COUNT(*) FROM ledger_postings WHERE provider_id = ?",
        [provider_id],
    ).fetchone()
    account = get_account(db, earnings_account(provider_id))
    return {
        "provider_id": provider_id,
        "earned_micro_yuan": account.credits_posted if account else 0,
        "voucher_micro_yuan": row[1],
        "deferred_micro_yuan": row[2],
        "receipts": row[3],
        "paid_out_micro_yuan": account.debits_posted if account else 0,
        "balance_micro_yuan": account.debit_headroom if account else 0,
        "statements": [s.to_dict() for s in statements_of(db, PROVIDER, provider_id)],
    }
