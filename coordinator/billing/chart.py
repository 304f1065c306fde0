"""The chart of accounts as billing opens it: each party's accounts with their ledger and
limit, the fiscal year's pool funded from the treasury, and each company's cap granted from the
year's entitlements.

======================  =============  =========================  ===============================
account                 ledger         limit                      moved by
======================  =============  =========================  ===============================
treasury:FY             cny            —                          funding the year's pool
pool:FY                 cny            debits ≤ credits           voucher parts, to earnings (or,
                                                                  held for a job, to pool_held)
pool_held:FY            cny            debits ≤ credits           held voucher money on its way
                                                                  from the pool to earnings
earnings:PROVIDER       cny            debits ≤ credits           credited by usage; payouts
receivable:ENTERPRISE   cny            credits ≤ debits           deferred parts; payments
bank                    cny            —                          payments in, payouts out
entitlements:FY         voucher_quota  —                          granting each company's cap
cap:FY:USCC             voucher_quota  debits ≤ credits           voucher parts used; holds
entitlements_used:FY    voucher_quota  —                          counterpart of cap use
credit_line:ENTERPRISE  credit         —                          setting the credit limit
credit:ENTERPRISE       credit         debits ≤ credits           holds, deferred parts,
                                                                  restored by payments
credit_used             credit         —                          counterpart of credit use
======================  =============  =========================  ===============================

Money (cny) and the two quotas live on separate ledgers, as TigerBeetle keeps assets apart:
a transfer never crosses ledgers. A company's cap and an enterprise's credit limit are quota
accounts that move in the same linked set as the money they limit.
"""

from __future__ import annotations

from typing import NamedTuple

from coordinator.billing.accounts import get_account, get_accounts, open_account
from coordinator.billing.linked_sets import create_transfers
from coordinator.billing.policy import VoucherPolicy
from coordinator.billing.records import Account, Transfer, transfer_id
from coordinator.billing.sql import savepoint
from coordinator.storage import Session
from shared.ledger_names import (
    BANK,
    CAP,
    CNY,
    CREDIT,
    CREDIT_ACCOUNT,
    CREDIT_LINE,
    CREDIT_USED,
    CREDITS_MUST_NOT_EXCEED_DEBITS,
    DEBITS_MUST_NOT_EXCEED_CREDITS,
    EARNINGS,
    ENTITLEMENT,
    ENTITLEMENTS,
    ENTITLEMENTS_USED,
    NO_LIMIT,
    POOL,
    POOL_FUNDING,
    POOL_HELD,
    RECEIVABLE,
    TREASURY,
    VOUCHER_QUOTA,
    cap_account,
    credit_account,
    credit_line_account,
    earnings_account,
    entitlement_cause,
    entitlements_account,
    entitlements_used_account,
    pool_account,
    pool_funding_cause,
    pool_held_account,
    receivable_account,
    treasury_account,
)


class AccountSpec(NamedTuple):
    """An account as the chart says it must be opened."""

    id: str
    ledger: str
    kind: str
    owner: str | None
    flags: str


def need_accounts(db: Session, specs: list[AccountSpec], now_ms: int) -> dict[str, Account]:
    """These accounts, opening any that do not exist yet (one query when all do)."""
    found = get_accounts(db, [spec.id for spec in specs])
    for account_id, ledger, kind, owner, flags in specs:
        if account_id not in found:
            found[account_id] = open_account(
                db, account_id, ledger=ledger, kind=kind, owner=owner, flags=flags, now_ms=now_ms
            )
    return found


def year_specs(year: int) -> list[AccountSpec]:
    owner = str(year)
    return [
        AccountSpec(treasury_account(year), CNY, TREASURY, owner, NO_LIMIT),
        AccountSpec(pool_account(year), CNY, POOL, owner, DEBITS_MUST_NOT_EXCEED_CREDITS),
        AccountSpec(pool_held_account(year), CNY, POOL_HELD, owner, DEBITS_MUST_NOT_EXCEED_CREDITS),
        AccountSpec(entitlements_account(year), VOUCHER_QUOTA, ENTITLEMENTS, owner, NO_LIMIT),
        AccountSpec(
            entitlements_used_account(year), VOUCHER_QUOTA, ENTITLEMENTS_USED, owner, NO_LIMIT
        ),
    ]


def cap_spec(year: int, uscc: str) -> AccountSpec:
    return AccountSpec(
        cap_account(year, uscc), VOUCHER_QUOTA, CAP, uscc, DEBITS_MUST_NOT_EXCEED_CREDITS
    )


def enterprise_specs(enterprise_id: str) -> list[AccountSpec]:
    return [
        AccountSpec(
            receivable_account(enterprise_id),
            CNY,
            RECEIVABLE,
            enterprise_id,
            CREDITS_MUST_NOT_EXCEED_DEBITS,
        ),
        AccountSpec(
            credit_account(enterprise_id),
            CREDIT,
            CREDIT_ACCOUNT,
            enterprise_id,
            DEBITS_MUST_NOT_EXCEED_CREDITS,
        ),
        AccountSpec(
            credit_line_account(enterprise_id), CREDIT, CREDIT_LINE, enterprise_id, NO_LIMIT
        ),
        AccountSpec(CREDIT_USED, CREDIT, CREDIT_USED, None, NO_LIMIT),
    ]


BANK_SPEC = AccountSpec(BANK, CNY, BANK, None, NO_LIMIT)


def earnings_specs(provider_id: str) -> list[AccountSpec]:
    return [
        AccountSpec(
            earnings_account(provider_id),
            CNY,
            EARNINGS,
            provider_id,
            DEBITS_MUST_NOT_EXCEED_CREDITS,
        ),
        BANK_SPEC,
    ]


def _grow(
    db: Session,
    account: Account,
    source: str,
    target: int,
    code: str,
    cause: str,
    now_ms: int,
) -> Account:
    """Credit `account` from `source` until its credits reach `target` (never takes back)."""
    if account.credits_posted >= target:
        return account
    amount = target - account.credits_posted
    create_transfers(
        db,
        [
            Transfer(
                transfer_id(cause, f"to:{target}"),
                source,
                account.id,
                amount,
                code,
                cause,
                at_ms=now_ms,
            )
        ],
    )
    return get_account(db, account.id) or account


def open_fiscal_year(db: Session, policy: VoucherPolicy, now_ms: int) -> Account:
    """Open the policy year's pool and fund it up to the policy's total; returns the pool account.

    Idempotent. Raising the total mid-year tops the pool up; lowering it takes nothing back.
    """
    year = policy.fiscal_year
    with savepoint(db, "vouchers_year"):
        accounts = need_accounts(db, year_specs(year), now_ms)
        return _grow(
            db,
            accounts[pool_account(year)],
            treasury_account(year),
            policy.pool_total_micro_yuan,
            POOL_FUNDING,
            pool_funding_cause(year),
            now_ms,
        )


def ensure_cap(db: Session, uscc: str, policy: VoucherPolicy, now_ms: int) -> Account:
    """This company's cap for the policy year, opened and granted up to the policy's cap."""
    year = policy.fiscal_year
    cap = need_accounts(db, [cap_spec(year, uscc)], now_ms)[cap_account(year, uscc)]
    return _grow(
        db,
        cap,
        entitlements_account(year),
        policy.per_company_cap_micro_yuan,
        ENTITLEMENT,
        entitlement_cause(year, uscc),
        now_ms,
    )


def ensure_year(
    db: Session, uscc: str, policy: VoucherPolicy, now_ms: int
) -> tuple[Account, Account]:
    """The year's pool and this company's cap, opened and granted as the policy says."""
    year = policy.fiscal_year
    accounts = need_accounts(db, [*year_specs(year), cap_spec(year, uscc)], now_ms)
    pool = accounts[pool_account(year)]
    if pool.credits_posted < policy.pool_total_micro_yuan:
        pool = open_fiscal_year(db, policy, now_ms)
    cap = accounts[cap_account(year, uscc)]
    if cap.credits_posted < policy.per_company_cap_micro_yuan:
        cap = ensure_cap(db, uscc, policy, now_ms)
    return pool, cap
