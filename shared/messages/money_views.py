"""The JSON API's bodies about money: an account with its voucher, reservations and
statements, the public voucher pool, and the audited ledger balances."""

from __future__ import annotations

from typing import Literal

import msgspec

from shared.messages.fields import Count, Message, MicroYuan, Milliseconds

Role = Literal["enterprise", "auditor"]
Unset = msgspec.UnsetType
UNSET = msgspec.UNSET


class Voucher(Message):
    eligible: bool
    cap_micro_yuan: MicroYuan
    used_micro_yuan: MicroYuan
    held_micro_yuan: MicroYuan
    remaining_micro_yuan: MicroYuan
    coverage_bps: int


class Reservation(Message):
    job_id: str
    enterprise_id: str
    max_cost_micro_yuan: MicroYuan
    voucher_estimate_micro_yuan: MicroYuan
    reserved_micro_yuan: MicroYuan
    remaining_micro_yuan: MicroYuan
    voucher_held_micro_yuan: MicroYuan
    self_dealing_cover_micro_yuan: MicroYuan
    fiscal_year: int | None
    transfer_id: str | None


class StatementLine(Message):
    job_id: str
    total_micro_yuan: MicroYuan
    voucher_micro_yuan: MicroYuan
    deferred_micro_yuan: MicroYuan
    receipts: Count


class Statement(Message):
    """An enterprise's monthly statement with what is paid of it and its status."""

    period: str
    party_kind: Literal["enterprise", "provider"]
    party_id: str
    total_micro_yuan: MicroYuan
    voucher_micro_yuan: MicroYuan
    deferred_micro_yuan: MicroYuan
    lines: list[StatementLine]
    issued_at_ms: Milliseconds
    amount_due_micro_yuan: MicroYuan
    due_at_ms: Milliseconds | None
    due_date: str | None
    suspend_after_ms: Milliseconds | None
    paid_micro_yuan: MicroYuan
    outstanding_micro_yuan: MicroYuan
    status: Literal["paid", "open", "late", "overdue"]


class Account(Message, omit_defaults=True):
    """Who the token is; an enterprise also sees its voucher, credit, reservations and
    statements (the fields an auditor's account leaves out)."""

    role: Role
    id: str
    enterprise_id: str | Unset = UNSET
    uscc: str | Unset = UNSET
    fiscal_year: int | Unset = UNSET
    voucher: Voucher | Unset = UNSET
    pool_remaining_micro_yuan: MicroYuan | Unset = UNSET
    deferred_balance_micro_yuan: MicroYuan | Unset = UNSET
    unbilled_micro_yuan: MicroYuan | Unset = UNSET
    paid_micro_yuan: MicroYuan | Unset = UNSET
    credit_limit_micro_yuan: MicroYuan | Unset = UNSET
    reserved_micro_yuan: MicroYuan | Unset = UNSET
    headroom_micro_yuan: MicroYuan | Unset = UNSET
    reservations: list[Reservation] | Unset = UNSET
    statements: list[Statement] | Unset = UNSET
    suspended: bool | Unset = UNSET
    suspended_reason: str | None | Unset = UNSET


class VoucherPool(Message):
    """The fiscal year's public voucher pool, in micro-yuan."""

    fiscal_year: int
    granted: MicroYuan
    used: MicroYuan
    held: MicroYuan
    remaining: MicroYuan
    policy_total: MicroYuan
    companies: Count
    entitlements_granted: MicroYuan


class AccountBalance(Message):
    id: str
    debits_posted: MicroYuan
    credits_posted: MicroYuan


class LedgerBalances(Message):
    """Posted balances of the audited accounts, read with the log size they belong to."""

    log_size: Count
    accounts: list[AccountBalance]
