"""Public compute vouchers and "use first, pay later", kept on the ledger (coordinator/ledger.py).

Nobody applies for a voucher: every registered enterprise simply has its year's entitlement,
one per USCC. Each charge is split by `split_charge` into the part the voucher pool pays and
the part the enterprise pays later; `post_usage` posts both, with the provider's earning, as
one linked set of transfers named after the receipt, so a retry is a no-op. The pool, each
company's cap and each enterprise's credit limit are balance limits of ledger accounts, so the
ledger itself refuses to overspend them. Usage belongs to the calendar month (UTC) in which its
receipt was accepted; closing a month issues statements, with a due date, that must be paid.

Reservations: when a job is accepted, `reserve_job` holds everything it may need, as pending
transfers named after the job: the voucher share it counts on against its company's cap and
against the pool, and the rest of its maximum cost against the enterprise's credit. So the sum
of accepted jobs can always be paid, and a job that cannot be held is refused at submission.
Each usage posting draws its parts from these holds (partial posts of the pending transfers)
and takes only any excess from what is free; `settle_job` at the job's end voids what is left.
Self-dealing is settled at acceptance too (see `reserve_job` and `cover_self_dealing`).

Every function here is synchronous, takes the coordinator's `sqlite_utils.Database`, runs
inside the caller's transaction (the writer thread's, or `coordinator.storage.transaction`) and is
atomic by its own savepoint: it either does everything or raises and leaves nothing behind.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import sqlite_utils

from coordinator import ledger as L
from coordinator.ledger import (
    IdempotencyConflict,
    LedgerError,
    LimitExceeded,
    Transfer,
    create_transfers,
    savepoint,
    transfer_id,
)
from shared.errors import SuanliError
from shared.money import MICRO_PER_YUAN, format_yuan
from shared.settings_file import describe, read_table, setting
from shared.uscc import validate_uscc

BPS = 10_000
DAY_MS = 86_400_000
MAX_AMOUNT = 2**62
MAX_REFERENCE = 200
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PERIOD = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])")

# why a charge got less voucher coverage than its share (or "covered" when it got all of it)
COVERED = "covered"
NO_COVERAGE = "no_coverage"
SELF_DEALING = "self_dealing"
NOT_ELIGIBLE = "provider_not_subsidised"
CAP_EXHAUSTED = "cap_exhausted"
POOL_EXHAUSTED = "pool_exhausted"
OUTSIDE_FISCAL_YEAR = "outside_fiscal_year"


# -- errors ----------------------------------------------------------------------------------


class VoucherPolicyError(SuanliError):
    """The [vouchers] table of the coordinator's configuration is invalid."""

    code = "bad_voucher_policy"


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


# -- the policy ------------------------------------------------------------------------------


def _this_year() -> int:
    return datetime.now(UTC).year


@dataclass(frozen=True)
class VoucherPolicy:
    """The city's voucher rules for one fiscal year, from the coordinator TOML's [vouchers] table."""

    fiscal_year: int = setting(
        _this_year,
        "calendar year whose pool and caps vouchers draw on (default: this UTC year); "
        "usage accepted in another year gets no voucher",
    )
    pool_total_micro_yuan: int = setting(
        1_000_000_000 * MICRO_PER_YUAN, "the year's voucher pool, spent first come, first served"
    )
    per_company_cap_micro_yuan: int = setting(
        5_000_000 * MICRO_PER_YUAN, "most voucher money one company (USCC) may receive in the year"
    )
    coverage_bps: int = setting(
        5_000, "share of each charge the voucher pays, in basis points (5000 = 50%), rounded down"
    )
    providers_may_be_subsidised: bool = setting(
        True,
        "whether a company that is also a provider gets vouchers at all "
        "(never for compute it buys from itself)",
    )
    statement_period: str = setting("month", "statement period; only calendar months (UTC)")
    payment_terms_days: int = setting(30, "days after a period's end that its statement is due")
    grace_days: int = setting(
        15, "days after the due date before an unpaid enterprise is suspended"
    )
    default_credit_limit_micro_yuan: int = setting(
        100_000 * MICRO_PER_YUAN, "credit limit a new enterprise starts with"
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            expected = (
                bool
                if f.name == "providers_may_be_subsidised"
                else (str if f.name == "statement_period" else int)
            )
            if type(value) is not expected:
                kind = {int: "an integer", bool: "true or false", str: "a string"}[expected]
                raise VoucherPolicyError(f"[vouchers] {f.name} must be {kind}, not {value!r}")
        if not 2000 <= self.fiscal_year <= 9999:
            raise VoucherPolicyError(
                f"[vouchers] fiscal_year {self.fiscal_year} is not a plausible year"
            )
        for name in (
            "pool_total_micro_yuan",
            "per_company_cap_micro_yuan",
            "default_credit_limit_micro_yuan",
        ):
            value = getattr(self, name)
            if not 0 <= value <= MAX_AMOUNT:
                raise VoucherPolicyError(
                    f"[vouchers] {name} must be between 0 and {MAX_AMOUNT} micro-yuan, not {value}"
                )
        if not 0 <= self.coverage_bps <= BPS:
            raise VoucherPolicyError(
                f"[vouchers] coverage_bps must be between 0 and {BPS} (100%), not {self.coverage_bps}"
            )
        if self.statement_period != "month":
            raise VoucherPolicyError(
                f'[vouchers] statement_period must be "month", not {self.statement_period!r}'
            )
        for name in ("payment_terms_days", "grace_days"):
            if not 0 <= getattr(self, name) <= 3650:
                raise VoucherPolicyError(f"[vouchers] {name} must be between 0 and 3650 days")

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str]]:
        """(name, default, help) of every setting, for --help and the docs."""
        return describe(cls)

    @classmethod
    def from_toml_table(cls, table: dict[str, Any]) -> VoucherPolicy:
        """The policy from a parsed [vouchers] table; unknown keys and wrong types are refused."""
        if not isinstance(table, dict):
            raise VoucherPolicyError("[vouchers] must be a table")
        known = {f.name for f in fields(cls)}
        for name in table:
            if name not in known:
                raise VoucherPolicyError(
                    f"[vouchers] has no setting {name!r}; the settings are {', '.join(sorted(known))}"
                )
        return cls(**table)


def load_voucher_policy(path: Path | None) -> VoucherPolicy:
    """The [vouchers] table of the coordinator's TOML file (all defaults without a file or table)."""
    if path is None:
        return VoucherPolicy()
    return VoucherPolicy.from_toml_table(read_table(path, "vouchers", VoucherPolicyError))


# -- the split -------------------------------------------------------------------------------


class Split(NamedTuple):
    voucher: int
    deferred: int
    reason: str


def split_charge(
    charge: int,
    coverage_bps: int,
    cap_remaining: int,
    pool_remaining: int,
    self_dealing: bool,
    subsidy_allowed: bool,
) -> Split:
    """Split a charge into (voucher part, deferred part, reason); pure integer arithmetic.

    The voucher pays coverage_bps/10 000 of the charge, rounded down, but never more than the
    company's remaining cap or the pool's remaining money, and nothing when provider and
    enterprise are one company or the policy does not subsidise this company. The reason
    names what held the voucher below its share ("covered" when nothing did).
    """
    for name, value in (
        ("charge", charge),
        ("coverage_bps", coverage_bps),
        ("cap_remaining", cap_remaining),
        ("pool_remaining", pool_remaining),
    ):
        if type(value) is not int or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, not {value!r}")
    if coverage_bps > BPS:
        raise ValueError(f"coverage_bps must be at most {BPS}, not {coverage_bps}")
    if self_dealing:
        return Split(0, charge, SELF_DEALING)
    if not subsidy_allowed:
        return Split(0, charge, NOT_ELIGIBLE)
    if coverage_bps == 0:
        return Split(0, charge, NO_COVERAGE)
    share = charge * coverage_bps // BPS
    voucher = min(share, cap_remaining, pool_remaining)
    if voucher == share:
        reason = COVERED
    elif cap_remaining <= pool_remaining:
        reason = CAP_EXHAUSTED
    else:
        reason = POOL_EXHAUSTED
    return Split(voucher, charge - voucher, reason)


# -- periods ---------------------------------------------------------------------------------


def _utc(now_ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=now_ms)


def _ms(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def period_of(now_ms: int) -> str:
    """The statement period (YYYY-MM, UTC) a moment belongs to."""
    moment = _utc(now_ms)
    return f"{moment.year:04d}-{moment.month:02d}"


def period_bounds(period: str) -> tuple[int, int]:
    """[start, end) of a period in ms; `BadPeriod` unless it is written YYYY-MM."""
    match = _PERIOD.fullmatch(period) if isinstance(period, str) else None
    if match is None:
        raise BadPeriod(f"a statement period is written YYYY-MM, like 2026-11, not {period!r}")
    year, month = int(match[1]), int(match[2])
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return _ms(start), _ms(end)


def _date(ms: int) -> str:
    return _utc(ms).strftime("%Y-%m-%d")


def _yuan(micro: int) -> str:
    return "¥" + format_yuan(micro)


# -- accounts --------------------------------------------------------------------------------


def _check_amount(value: object, name: str, *, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if type(value) is not int or not low <= value <= MAX_AMOUNT:
        raise L.InvalidTransfer(
            f"{name} must be an integer number of micro-yuan from {low} to {MAX_AMOUNT}, not {value!r}"
        )
    return value


def _need(
    db: sqlite_utils.Database, specs: list[tuple[str, str, str, str | None, str]], now_ms: int
) -> dict[str, L.Account]:
    """These accounts, opening any that do not exist yet (one query when all do)."""
    found = L.get_accounts(db, [spec[0] for spec in specs])
    for account_id, ledger, kind, owner, flags in specs:
        if account_id not in found:
            found[account_id] = L.open_account(
                db, account_id, ledger=ledger, kind=kind, owner=owner, flags=flags, now_ms=now_ms
            )
    return found


def _year_specs(year: int) -> list[tuple[str, str, str, str | None, str]]:
    return [
        (L.treasury_account(year), L.CNY, "treasury", str(year), L.NO_LIMIT),
        (L.pool_account(year), L.CNY, "pool", str(year), L.DEBITS_MUST_NOT_EXCEED_CREDITS),
        (
            L.pool_held_account(year),
            L.CNY,
            "pool_held",
            str(year),
            L.DEBITS_MUST_NOT_EXCEED_CREDITS,
        ),
        (L.entitlements_account(year), L.VOUCHER_QUOTA, "entitlements", str(year), L.NO_LIMIT),
        (
            L.entitlements_used_account(year),
            L.VOUCHER_QUOTA,
            "entitlements_used",
            str(year),
            L.NO_LIMIT,
        ),
    ]


def _cap_spec(year: int, uscc: str) -> tuple[str, str, str, str | None, str]:
    return (
        L.cap_account(year, uscc),
        L.VOUCHER_QUOTA,
        "cap",
        uscc,
        L.DEBITS_MUST_NOT_EXCEED_CREDITS,
    )


def _enterprise_specs(enterprise_id: str) -> list[tuple[str, str, str, str | None, str]]:
    return [
        (
            L.receivable_account(enterprise_id),
            L.CNY,
            "receivable",
            enterprise_id,
            L.CREDITS_MUST_NOT_EXCEED_DEBITS,
        ),
        (
            L.credit_account(enterprise_id),
            L.CREDIT,
            "credit",
            enterprise_id,
            L.DEBITS_MUST_NOT_EXCEED_CREDITS,
        ),
        (L.credit_line_account(enterprise_id), L.CREDIT, "credit_line", enterprise_id, L.NO_LIMIT),
        (L.CREDIT_USED, L.CREDIT, "credit_used", None, L.NO_LIMIT),
    ]


def _earnings_specs(provider_id: str) -> list[tuple[str, str, str, str | None, str]]:
    return [
        (
            L.earnings_account(provider_id),
            L.CNY,
            "earnings",
            provider_id,
            L.DEBITS_MUST_NOT_EXCEED_CREDITS,
        ),
        (L.BANK, L.CNY, "bank", None, L.NO_LIMIT),
    ]


def _grow(
    db: sqlite_utils.Database,
    account: L.Account,
    source: str,
    target: int,
    code: str,
    cause: str,
    now_ms: int,
) -> L.Account:
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
    return L.get_account(db, account.id) or account


def open_fiscal_year(db: sqlite_utils.Database, policy: VoucherPolicy, now_ms: int) -> L.Account:
    """Open the policy year's pool and fund it up to the policy's total; returns the pool account.

    Idempotent. Raising the total mid-year tops the pool up; lowering it takes nothing back.
    """
    year = policy.fiscal_year
    with savepoint(db, "vouchers_year"):
        accounts = _need(db, _year_specs(year), now_ms)
        return _grow(
            db,
            accounts[L.pool_account(year)],
            L.treasury_account(year),
            policy.pool_total_micro_yuan,
            L.POOL_FUNDING,
            f"pool:{year}",
            now_ms,
        )


def _ensure_cap(
    db: sqlite_utils.Database, uscc: str, policy: VoucherPolicy, now_ms: int
) -> L.Account:
    year = policy.fiscal_year
    cap = _need(db, [_cap_spec(year, uscc)], now_ms)[L.cap_account(year, uscc)]
    return _grow(
        db,
        cap,
        L.entitlements_account(year),
        policy.per_company_cap_micro_yuan,
        L.ENTITLEMENT,
        f"entitlement:{year}:{uscc}",
        now_ms,
    )


def _ensure_year(
    db: sqlite_utils.Database, uscc: str, policy: VoucherPolicy, now_ms: int
) -> tuple[L.Account, L.Account]:
    """The year's pool and this company's cap, opened and granted as the policy says."""
    year = policy.fiscal_year
    accounts = _need(db, [*_year_specs(year), _cap_spec(year, uscc)], now_ms)
    pool = accounts[L.pool_account(year)]
    if pool.credits_posted < policy.pool_total_micro_yuan:
        pool = open_fiscal_year(db, policy, now_ms)
    cap = accounts[L.cap_account(year, uscc)]
    if cap.credits_posted < policy.per_company_cap_micro_yuan:
        cap = _ensure_cap(db, uscc, policy, now_ms)
    return pool, cap


def open_enterprise_accounts(
    db: sqlite_utils.Database, enterprise_id: str, uscc: str, policy: VoucherPolicy, now_ms: int
) -> None:
    """Give a newly registered enterprise its ledger accounts and its entitlement; idempotent.

    Opens its receivable and credit accounts with the policy's default credit limit, and its
    company's cap for the policy year (one per USCC: two enterprise ids with one USCC would
    share it). Nobody applies: registration is the entitlement.
    """
    code = validate_uscc(uscc)
    if type(enterprise_id) is not str or not enterprise_id:
        raise L.InvalidTransfer("an enterprise id is non-empty text")
    with savepoint(db, "vouchers_open"):
        row = db.conn.execute(
            "SELECT uscc FROM ledger_enterprises WHERE enterprise_id = ?", [enterprise_id]
        ).fetchone()
        if row is not None and row[0] != code:
            raise IdempotencyConflict(
                f"enterprise {enterprise_id} already has its entitlement under USCC {row[0]}, not {code}"
            )
        if row is None:
            db.conn.execute(
                "INSERT INTO ledger_enterprises (enterprise_id, uscc, opened_at_ms) "
                "VALUES (?, ?, ?)",
                [enterprise_id, code, now_ms],
            )
        accounts = _need(db, _enterprise_specs(enterprise_id), now_ms)
        line = accounts[L.credit_line_account(enterprise_id)]
        if (
            line.debits_posted == 0
            and line.credits_posted == 0
            and policy.default_credit_limit_micro_yuan > 0
        ):
            cause = f"credit-limit:{enterprise_id}"
            create_transfers(
                db,
                [
                    Transfer(
                        transfer_id(cause, "opening"),
                        line.id,
                        L.credit_account(enterprise_id),
                        policy.default_credit_limit_micro_yuan,
                        L.CREDIT_LIMIT,
                        cause,
                        at_ms=now_ms,
                    )
                ],
            )
        _ensure_year(db, code, policy, now_ms)


def _enterprise_uscc(
    db: sqlite_utils.Database, enterprise_id: str, policy: VoucherPolicy, now_ms: int
) -> str:
    """The USCC the enterprise's entitlement hangs on, opening its accounts if registration predates them."""
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


def _opened_uscc(db: sqlite_utils.Database, enterprise_id: str) -> str:
    row = db.conn.execute(
        "SELECT uscc FROM ledger_enterprises WHERE enterprise_id = ?", [enterprise_id]
    ).fetchone()
    if row is None:
        raise UnknownEnterprise(f"enterprise {enterprise_id} has no ledger accounts")
    return str(row[0])


def _is_provider(db: sqlite_utils.Database, uscc: str) -> bool:
    return (
        db.conn.execute("SELECT 1 FROM providers WHERE uscc = ? LIMIT 1", [uscc]).fetchone()
        is not None
    )


def _subsidy_allowed(db: sqlite_utils.Database, uscc: str, policy: VoucherPolicy) -> bool:
    return policy.providers_may_be_subsidised or not _is_provider(db, uscc)


def set_credit_limit(
    db: sqlite_utils.Database, enterprise_id: str, amount: int, now_ms: int
) -> int:
    """Set the enterprise's credit limit; returns it. Lowering it below what is owed and
    reserved is refused (`CreditExceeded`): collect or wait for the jobs first."""
    _check_amount(amount, "a credit limit", allow_zero=True)
    _opened_uscc(db, enterprise_id)
    with savepoint(db, "vouchers_credit"):
        accounts = _need(db, _enterprise_specs(enterprise_id), now_ms)
        line = accounts[L.credit_line_account(enterprise_id)]
        current = line.debits_posted - line.credits_posted
        if amount == current:
            return amount
        cause = f"credit-limit:{enterprise_id}"
        leg = f"{line.debits_posted}/{line.credits_posted}->{amount}"
        credit = L.credit_account(enterprise_id)
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
                        L.CREDIT_LIMIT,
                        cause,
                        at_ms=now_ms,
                    )
                ],
            )
        except LimitExceeded:
            held = _credit_figures(db, enterprise_id)
            raise CreditExceeded(
                f"the credit limit of {enterprise_id} cannot be lowered to {_yuan(amount)}: it owes "
                f"{_yuan(held['deferred_balance'])} and has {_yuan(held['reserved'])} reserved for "
                f"running jobs"
            ) from None
    return amount


def _credit_figures(db: sqlite_utils.Database, enterprise_id: str) -> dict[str, int]:
    accounts = L.get_accounts(
        db,
        [
            L.credit_account(enterprise_id),
            L.credit_line_account(enterprise_id),
            L.receivable_account(enterprise_id),
        ],
    )
    credit = accounts.get(L.credit_account(enterprise_id))
    line = accounts.get(L.credit_line_account(enterprise_id))
    receivable = accounts.get(L.receivable_account(enterprise_id))
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


# -- reservations ----------------------------------------------------------------------------

# the legs of a job's reservation, each a pending transfer whose id derives from the job
_CREDIT_HOLD = "reserve"
_CAP_HOLD = "reserve-cap"
_POOL_HOLD = "reserve-pool"
_COVER_HOLD = "reserve-cover"
_HOLDS = (_CREDIT_HOLD, _COVER_HOLD, _CAP_HOLD, _POOL_HOLD)


@functools.lru_cache(maxsize=65_536)
def _hold_ids(job_id: str) -> dict[str, bytes]:
    """The ids of the job's holds (hashes, so cached: every posting of the job asks again).
    The answer is shared; callers never change it."""
    cause = f"job:{job_id}"
    return {leg: transfer_id(cause, leg) for leg in _HOLDS}


@dataclass(frozen=True)
class Reservation:
    """What a job's reservation holds: credit for the deferred part, and the voucher share on
    its company's cap and on the pool; `remaining` and `voucher_remaining` are what is left."""

    job_id: str
    enterprise_id: str
    max_cost: int
    voucher_estimate: int
    amount: int
    remaining: int
    transfer_id: bytes | None
    voucher_remaining: int = 0
    cover: int = 0
    fiscal_year: int | None = None

    @property
    def held(self) -> int:
        """Everything the reservation still holds for the job, credit and voucher together."""
        return self.remaining + self.voucher_remaining

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "enterprise_id": self.enterprise_id,
            "max_cost_micro_yuan": self.max_cost,
            "voucher_estimate_micro_yuan": self.voucher_estimate,
            "reserved_micro_yuan": self.amount,
            "remaining_micro_yuan": self.remaining,
            "voucher_held_micro_yuan": self.voucher_remaining,
            "self_dealing_cover_micro_yuan": self.cover,
            "fiscal_year": self.fiscal_year,
            "transfer_id": self.transfer_id.hex() if self.transfer_id else None,
        }


def _reservation(db: sqlite_utils.Database, job_id: str) -> Reservation | None:
    row = db.conn.execute(
        "SELECT job_id, enterprise_id, max_cost, voucher_estimate, amount, transfer_id "
        "FROM ledger_reservations WHERE job_id = ?",
        [job_id],
    ).fetchone()
    if row is None:
        return None
    ids = _hold_ids(job_id)
    found = L.holds(db, list(ids.values()))
    left = {leg: found[i].remaining if i in found else 0 for leg, i in ids.items()}
    pool = found.get(ids[_POOL_HOLD])
    year = int(pool.debit_account.split(":", 1)[1]) if pool is not None else None
    cover = found[ids[_COVER_HOLD]].amount if ids[_COVER_HOLD] in found else 0
    return Reservation(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        left[_CREDIT_HOLD] + left[_COVER_HOLD],
        row[5],
        left[_POOL_HOLD],
        cover,
        year,
    )


def reserve_job(
    db: sqlite_utils.Database,
    job_id: str,
    enterprise_id: str,
    max_cost: int,
    *,
    policy: VoucherPolicy,
    now_ms: int,
) -> Reservation:
    """Hold everything a job may need, so that it can always be paid up to its maximum cost.

    Three pending transfers named after the job, written together or not at all: the voucher
    share it counts on (`split_charge` of the maximum cost against what the company's cap and
    the pool have not spent or held for other jobs) on the company's cap and on the pool, and
    the rest of the maximum cost on the enterprise's credit. Usage postings draw these holds
    down and never fail for cap, pool or credit while the job stays within its maximum;
    `settle_job` voids what is left. Call once, when the job is accepted; idempotent by job
    (the same request returns the first reservation). Raises `Suspended` if the enterprise is
    suspended and `CreditExceeded`, with a sentence, when the credit cannot hold its part:
    the job is refused then, rather than starved of payment later.

    Self-dealing: the voucher pays nothing for compute a company buys from itself, and the
    provider is not known until the auction. So when the enterprise's company is also a
    registered provider (its own agents may win the job), the reservation counts on no
    voucher and holds the whole maximum cost on credit; a job awarded to another company
    still gets the voucher at posting, from what the cap and pool have free. A company that
    registers as a provider later has its open reservations moved to credit then
    (`cover_self_dealing`). Either way a self-dealing job is payable to its maximum cost and
    no voucher money reaches it.
    """
    _check_amount(max_cost, "a job's maximum cost", allow_zero=True)
    if type(job_id) is not str or not job_id:
        raise L.InvalidTransfer("a job id is non-empty text")
    found = _reservation(db, job_id)
    if found is not None:
        if (found.enterprise_id, found.max_cost) != (enterprise_id, max_cost):
            raise IdempotencyConflict(
                f"job {job_id} already has a reservation for {found.enterprise_id} with maximum "
                f"cost {_yuan(found.max_cost)}"
            )
        return found
    with savepoint(db, "vouchers_reserve"):
        uscc = _enterprise_uscc(db, enterprise_id, policy, now_ms)
        suspended, why = is_suspended(db, enterprise_id, now_ms)
        if suspended:
            raise Suspended(why)
        estimate = 0
        own = _is_provider(db, uscc)
        year = policy.fiscal_year
        if _utc(now_ms).year == year:
            pool, cap = _ensure_year(db, uscc, policy, now_ms)
            if not own:
                estimate = split_charge(
                    max_cost,
                    policy.coverage_bps,
                    max(cap.debit_headroom, 0),
                    max(pool.debit_headroom, 0),
                    False,
                    _subsidy_allowed(db, uscc, policy),
                ).voucher
        amount = max_cost - estimate
        cause = f"job:{job_id}"
        ids = _hold_ids(job_id)
        legs = []
        if estimate:
            legs += [
                Transfer(
                    ids[_CAP_HOLD],
                    L.cap_account(year, uscc),
                    L.entitlements_used_account(year),
                    estimate,
                    L.RESERVATION,
                    cause,
                    kind=L.PENDING,
                    at_ms=now_ms,
                ),
                Transfer(
                    ids[_POOL_HOLD],
                    L.pool_account(year),
                    L.pool_held_account(year),
                    estimate,
                    L.RESERVATION,
                    cause,
                    kind=L.PENDING,
                    at_ms=now_ms,
                ),
            ]
        pending: bytes | None = None
        if amount > 0:
            pending = ids[_CREDIT_HOLD]
            legs.append(
                Transfer(
                    pending,
                    L.credit_account(enterprise_id),
                    L.CREDIT_USED,
                    amount,
                    L.RESERVATION,
                    cause,
                    kind=L.PENDING,
                    at_ms=now_ms,
                )
            )
        try:
            create_transfers(db, legs)
        except LimitExceeded as exc:
            if exc.account != L.credit_account(enterprise_id):
                raise
            whole = (
                (
                    " (the whole maximum cost: the company also provides compute, and no "
                    "voucher pays for compute it may win itself)"
                )
                if own and not estimate
                else (
                    f" (its maximum cost {_yuan(max_cost)} less the voucher {_yuan(estimate)} held "
                    f"for it)"
                    if estimate
                    else ""
                )
            )
            raise _credit_exceeded(
                db, enterprise_id, amount, f"job {job_id}'s reservation{whole}"
            ) from None
        db.conn.execute(
            "INSERT INTO ledger_reservations (job_id, enterprise_id, max_cost, voucher_estimate, "
            "amount, transfer_id, at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [job_id, enterprise_id, max_cost, estimate, amount, pending, now_ms],
        )
    return Reservation(
        job_id,
        enterprise_id,
        max_cost,
        estimate,
        amount,
        amount,
        pending,
        estimate,
        0,
        year if estimate else None,
    )


def settle_job(db: sqlite_utils.Database, job_id: str, now_ms: int) -> Reservation | None:
    """Release what the job's usage did not draw of its holds (voids, one linked set); idempotent.

    Returns the reservation as it now stands, or None if the job never had one.
    """
    found = _reservation(db, job_id)
    if found is None or found.held == 0:
        return found
    cause = f"job:{job_id}"
    ids = _hold_ids(job_id)
    open_holds = L.holds(db, list(ids.values()))
    legs = [
        Transfer(
            transfer_id(cause, f"release-{leg}" if leg != _CREDIT_HOLD else "release"),
            hold.debit_account,
            hold.credit_account,
            hold.remaining,
            L.RESERVATION,
            cause,
            kind=L.VOID_PENDING,
            pending_id=hold.id,
            at_ms=now_ms,
        )
        for leg, hold in ((leg, open_holds.get(ids[leg])) for leg in _HOLDS)
        if hold is not None and hold.remaining > 0
    ]
    create_transfers(db, legs)
    return _reservation(db, job_id)


def cover_self_dealing(db: sqlite_utils.Database, uscc: str, now_ms: int) -> list[Reservation]:
    """Move the voucher holds of a company's open jobs to its credit: it is becoming a provider.

    Called when a provider is registered: from then on the company's own agents may win its
    jobs, and the voucher pays nothing for compute a company buys from itself. Each open
    reservation of the company's enterprises that holds voucher money has that hold voided
    and the same amount held on the enterprise's credit instead (a linked set per job), so
    the job stays payable to its maximum cost whoever wins it. Raises `CreditExceeded`, and
    moves nothing, when an enterprise's credit cannot take it: raise its credit limit or
    wait for those jobs to end, then register the provider. Returns the reservations moved.
    """
    code = validate_uscc(uscc)
    moved = []
    with savepoint(db, "vouchers_cover"):
        for job_id, enterprise_id in db.conn.execute(
            "SELECT r.job_id, r.enterprise_id FROM ledger_reservations r "
            "JOIN ledger_enterprises e ON e.enterprise_id = r.enterprise_id "
            "WHERE e.uscc = ? AND r.voucher_estimate > 0 ORDER BY r.at_ms, r.job_id",
            [code],
        ).fetchall():
            ids = _hold_ids(job_id)
            found = L.holds(db, [ids[_CAP_HOLD], ids[_POOL_HOLD], ids[_COVER_HOLD]])
            cap, pool = found.get(ids[_CAP_HOLD]), found.get(ids[_POOL_HOLD])
            if ids[_COVER_HOLD] in found or cap is None or pool is None or pool.remaining == 0:
                continue
            cause = f"job:{job_id}"
            legs = [
                Transfer(
                    transfer_id(cause, f"cover-{hold.id.hex()}"),
                    hold.debit_account,
                    hold.credit_account,
                    hold.remaining,
                    L.RESERVATION_COVER,
                    cause,
                    kind=L.VOID_PENDING,
                    pending_id=hold.id,
                    at_ms=now_ms,
                )
                for hold in (cap, pool)
            ]
            legs.append(
                Transfer(
                    ids[_COVER_HOLD],
                    L.credit_account(enterprise_id),
                    L.CREDIT_USED,
                    pool.remaining,
                    L.RESERVATION_COVER,
                    cause,
                    kind=L.PENDING,
                    at_ms=now_ms,
                )
            )
            try:
                create_transfers(db, legs)
            except LimitExceeded:
                raise _credit_exceeded(
                    db,
                    enterprise_id,
                    pool.remaining,
                    f"company {code} is becoming a provider, so the voucher held for job "
                    f"{job_id} must be held on its credit instead: that hold",
                ) from None
            reservation = _reservation(db, job_id)
            assert reservation is not None
            moved.append(reservation)
    return moved


def _credit_exceeded(
    db: sqlite_utils.Database, enterprise_id: str, amount: int, what: str
) -> CreditExceeded:
    held = _credit_figures(db, enterprise_id)
    return CreditExceeded(
        f"{what} of {_yuan(amount)} does not fit the credit of enterprise {enterprise_id}: limit "
        f"{_yuan(held['credit_limit'])}, owed {_yuan(held['deferred_balance'])}, reserved for jobs "
        f"{_yuan(held['reserved'])}, free {_yuan(max(held['headroom'], 0))}"
    )


# -- usage -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Posting:
    """What one accepted receipt's usage cost and who pays it."""

    receipt_digest: bytes
    enterprise_id: str
    provider_id: str
    enterprise_uscc: str
    provider_uscc: str
    lease_id: str
    job_id: str
    amount: int
    voucher: int
    deferred: int
    reason: str
    fiscal_year: int
    period: str
    at_ms: int
    transfer_ids: tuple[bytes, ...]
    legs: tuple[Transfer, ...] = field(default=(), compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "receipt_digest": self.receipt_digest.hex(),
            "enterprise_id": self.enterprise_id,
            "provider_id": self.provider_id,
            "lease_id": self.lease_id,
            "job_id": self.job_id,
            "charged_micro_yuan": self.amount,
            "voucher_micro_yuan": self.voucher,
            "deferred_micro_yuan": self.deferred,
            "reason": self.reason,
            "fiscal_year": self.fiscal_year,
            "period": self.period,
            "at_ms": self.at_ms,
            "transfer_ids": [t.hex() for t in self.transfer_ids],
        }


_POSTING_COLUMNS = (
    "receipt_digest, enterprise_id, provider_id, enterprise_uscc, provider_uscc, "
    "lease_id, job_id, amount, voucher, deferred, reason, fiscal_year, period, at_ms"
)


def _load_postings(db: sqlite_utils.Database, digests: list[bytes]) -> dict[bytes, Posting]:
    found: dict[bytes, Posting] = {}
    for row in L.rows_in(
        db, f"SELECT {_POSTING_COLUMNS} FROM ledger_postings WHERE receipt_digest IN", digests
    ):
        ids = tuple(t.id for t in L.transfers_for_receipt(db, row[0]))
        found[row[0]] = Posting(
            **dict(zip(_POSTING_COLUMNS.split(", "), row, strict=True)), transfer_ids=ids
        )
    return found


def _accepted_digests(db: sqlite_utils.Database, digests: list[bytes]) -> set[bytes]:
    return {row[0] for row in L.rows_in(db, "SELECT digest FROM receipts WHERE digest IN", digests)}


def _is_closed(db: sqlite_utils.Database, period: str) -> bool:
    return (
        db.conn.execute("SELECT 1 FROM ledger_period_closes WHERE period = ?", [period]).fetchone()
        is not None
    )


@dataclass(frozen=True)
class Usage:
    """One accepted receipt's usage to post: who pays whom, for which lease, how much."""

    enterprise_id: str
    provider_id: str
    enterprise_uscc: str
    provider_uscc: str
    lease_id: str
    job_id: str
    receipt_digest: bytes
    amount: int


def post_usage(
    db: sqlite_utils.Database,
    *,
    enterprise_id: str,
    provider_id: str,
    enterprise_uscc: str,
    provider_uscc: str,
    lease_id: str,
    job_id: str,
    receipt_digest: bytes,
    amount: int,
    policy: VoucherPolicy,
    now_ms: int,
) -> Posting:
    """Post one accepted receipt's usage (see `post_usages`); raises `CreditExceeded` when the
    deferred part does not fit the enterprise's credit."""
    (result,) = post_usages(
        db,
        [
            Usage(
                enterprise_id,
                provider_id,
                enterprise_uscc,
                provider_uscc,
                lease_id,
                job_id,
                receipt_digest,
                amount,
            )
        ],
        policy=policy,
        now_ms=now_ms,
    )
    if isinstance(result, CreditExceeded):
        raise result
    return result


def _check_usage(usage: Usage) -> None:
    _check_amount(usage.amount, "a usage amount", allow_zero=True)
    if type(usage.receipt_digest) is not bytes or not 0 < len(usage.receipt_digest) <= 64:
        raise L.InvalidTransfer("a receipt digest is 1 to 64 bytes")
    for name in ("enterprise_id", "provider_id", "lease_id", "job_id"):
        value = getattr(usage, name)
        if type(value) is not str or not value:
            raise L.InvalidTransfer(f"{name} must be non-empty text")


def post_usages(
    db: sqlite_utils.Database, usages: list[Usage], *, policy: VoucherPolicy, now_ms: int
) -> list[Posting | CreditExceeded]:
    """Post accepted receipts' usage in order: voucher part, deferred part, provider's earning.

    Each usage is one linked set of transfers whose ids derive from the receipt digest: the
    voucher part moves pool → provider earnings and uses the company's cap (drawing first on
    the job's voucher holds, through pool_held); the deferred part moves the enterprise's
    receivable → provider earnings and uses its credit (drawing first on the job's credit
    holds), so usage within the job's maximum cost never needs anything that is not already
    held for it (see `_split`). Each set sees the balances the earlier ones left, and all are
    written in one go. A usage whose deferred part does not fit the enterprise's credit gets
    `CreditExceeded` in its place in the answer (the caller revokes the lease) and posts
    nothing, nor do the same lease's later usages in the call. A repeat with the same fields returns the first posting; with other fields,
    `IdempotencyConflict`. Raises `UnknownReceipt` for a digest that is not an accepted
    receipt and `PeriodClosed` if the acceptance time falls in a closed period; then nothing
    is posted at all.
    """
    for usage in usages:
        _check_usage(usage)
    digests = [u.receipt_digest for u in usages]
    if len(set(digests)) != len(digests):
        raise L.InvalidTransfer("one call posts each receipt's usage once")
    results: list[Posting | CreditExceeded | None] = [None] * len(usages)
    existing = _load_postings(db, digests)
    for n, usage in enumerate(usages):
        found = existing.get(usage.receipt_digest)
        if found is None:
            continue
        changed = [
            name
            for name in (
                "enterprise_id",
                "provider_id",
                "enterprise_uscc",
                "provider_uscc",
                "lease_id",
                "job_id",
                "amount",
            )
            if getattr(found, name) != getattr(usage, name)
        ]
        if changed:
            raise IdempotencyConflict(
                f"receipt {usage.receipt_digest.hex()[:16]} was already posted with a different "
                f"{', '.join(changed)}; a retry must repeat the first posting exactly"
            )
        results[n] = found
    new = [(n, u) for n, u in enumerate(usages) if results[n] is None]
    if not new:
        return results  # type: ignore[return-value]
    accepted = _accepted_digests(db, [u.receipt_digest for _, u in new])
    for _, usage in new:
        if usage.receipt_digest not in accepted:
            raise UnknownReceipt(
                f"receipt {usage.receipt_digest.hex()[:16]} is not an accepted "
                f"receipt; usage is posted only for accepted receipts"
            )
    period = period_of(now_ms)
    if _is_closed(db, period):
        raise PeriodClosed(
            f"period {period} is closed; usage accepted at {now_ms} cannot be posted into it"
        )
    year = _utc(now_ms).year
    with savepoint(db, "vouchers_usage"):
        subsidy = _prepare_parties(db, [u for _, u in new], policy, year, now_ms)
        batch = L.TransferBatch(db)
        reservations = _preload(db, batch, [u for _, u in new], year)
        refused: dict[str, CreditExceeded] = {}
        rows = []
        for n, usage in new:
            if usage.lease_id in refused:  # its amount builds on the refused usage before it
                results[n] = refused[usage.lease_id]
                continue
            holds = reservations.get(usage.job_id)
            if holds is not None and holds.enterprise_id != usage.enterprise_id:
                holds = None
            split, fiscal_year = _split(batch, usage, policy, year, subsidy, holds)
            legs = _usage_legs(batch, usage, split, fiscal_year, now_ms, holds)
            try:
                batch.add(legs)
            except LimitExceeded as exc:
                if exc.account != L.credit_account(usage.enterprise_id):
                    raise
                batch.flush()  # the refusal's figures include the usage posted before it
                results[n] = refused[usage.lease_id] = _credit_exceeded(
                    db,
                    usage.enterprise_id,
                    split.deferred,
                    f"the deferred part of receipt {usage.receipt_digest.hex()[:16]}",
                )
                continue
            rows.append(
                (
                    usage.receipt_digest,
                    usage.enterprise_id,
                    usage.provider_id,
                    usage.enterprise_uscc,
                    usage.provider_uscc,
                    usage.lease_id,
                    usage.job_id,
                    usage.amount,
                    split.voucher,
                    split.deferred,
                    split.reason,
                    fiscal_year,
                    period,
                    now_ms,
                )
            )
            results[n] = Posting(
                *rows[-1], transfer_ids=tuple(t.id for t in legs), legs=tuple(legs)
            )
        batch.flush()
        db.conn.executemany(
            f"INSERT INTO ledger_postings ({_POSTING_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
    return results  # type: ignore[return-value]


def _prepare_parties(
    db: sqlite_utils.Database, usages: list[Usage], policy: VoucherPolicy, year: int, now_ms: int
) -> dict[str, bool]:
    """Open what the usages' parties need, asking for all of them at once; returns whether each
    company may be subsidised."""
    enterprises = sorted({(u.enterprise_id, u.enterprise_uscc) for u in usages})
    opened = dict(
        L.rows_in(
            db,
            "SELECT enterprise_id, uscc FROM ledger_enterprises WHERE enterprise_id IN",
            sorted({e for e, _ in enterprises}),
        )
    )
    for enterprise_id, uscc in enterprises:
        if enterprise_id not in opened:
            open_enterprise_accounts(db, enterprise_id, uscc, policy, now_ms)
        elif opened[enterprise_id] != uscc:
            raise IdempotencyConflict(
                f"enterprise {enterprise_id}'s entitlement is under USCC "
                f"{opened[enterprise_id]}, not {uscc}"
            )
    providers = sorted({(u.provider_id, u.provider_uscc) for u in usages})
    registered = dict(
        L.rows_in(
            db, "SELECT id, uscc FROM providers WHERE id IN", sorted({p for p, _ in providers})
        )
    )
    for provider_id, uscc in providers:
        if provider_id in registered and registered[provider_id] != uscc:
            # self-dealing is judged on USCCs, so the caller's must be the registered one
            raise IdempotencyConflict(
                f"provider {provider_id} is registered under USCC "
                f"{registered[provider_id]}, not {uscc}"
            )
    _need(
        db,
        list(
            {
                spec[0]: spec
                for provider_id, _ in providers
                for spec in _earnings_specs(provider_id)
            }.values()
        ),
        now_ms,
    )
    if year != policy.fiscal_year:
        return {}
    usccs = sorted({u.enterprise_uscc for u in usages})
    accounts = _need(db, [*_year_specs(year), *(_cap_spec(year, uscc) for uscc in usccs)], now_ms)
    if accounts[L.pool_account(year)].credits_posted < policy.pool_total_micro_yuan:
        open_fiscal_year(db, policy, now_ms)
    for uscc in usccs:
        if accounts[L.cap_account(year, uscc)].credits_posted < policy.per_company_cap_micro_yuan:
            _ensure_cap(db, uscc, policy, now_ms)
    providing = {
        row[0] for row in L.rows_in(db, "SELECT DISTINCT uscc FROM providers WHERE uscc IN", usccs)
    }
    return {uscc: policy.providers_may_be_subsidised or uscc not in providing for uscc in usccs}


@dataclass(frozen=True)
class _JobHolds:
    """A job's reservation as its postings draw on it: the pending transfer ids that exist."""

    enterprise_id: str
    credit: tuple[bytes, ...]  # the credit hold, then the self-dealing cover, those that exist
    cap: bytes | None
    pool: bytes | None
    fiscal_year: int | None  # the year whose cap and pool hold its voucher share


def _preload(
    db: sqlite_utils.Database, batch: L.TransferBatch, usages: list[Usage], year: int
) -> dict[str, _JobHolds]:
    """Read every account and hold the usages may move, in a few queries; returns each job's
    holds. A voucher hold is in the fiscal year of its reservation (see `reserve_job`)."""
    rows = L.rows_in(
        db,
        "SELECT job_id, enterprise_id, voucher_estimate, transfer_id, at_ms "
        "FROM ledger_reservations WHERE job_id IN",
        sorted({u.job_id for u in usages}),
    )
    ids = {job_id: _hold_ids(job_id) for job_id, *_ in rows}
    wanted: list[bytes] = []
    accounts = {
        L.pool_account(year),
        L.pool_held_account(year),
        L.entitlements_used_account(year),
        L.CREDIT_USED,
    }
    held_years = {job_id: _utc(at_ms).year for job_id, _, voucher, _, at_ms in rows if voucher}
    for job_id, _, voucher, credit, _ in rows:
        if credit is not None:
            wanted.append(ids[job_id][_CREDIT_HOLD])
        if voucher:
            wanted += [ids[job_id][leg] for leg in (_COVER_HOLD, _CAP_HOLD, _POOL_HOLD)]
    for u in usages:
        accounts |= {
            L.cap_account(year, u.enterprise_uscc),
            L.earnings_account(u.provider_id),
            L.receivable_account(u.enterprise_id),
            L.credit_account(u.enterprise_id),
        }
        held_year = held_years.get(u.job_id)
        if held_year is not None and held_year != year:
            accounts |= {
                L.pool_account(held_year),
                L.pool_held_account(held_year),
                L.entitlements_used_account(held_year),
                L.cap_account(held_year, u.enterprise_uscc),
            }
    batch.preload(sorted(accounts), wanted)
    asked = set(wanted)

    def found(pending: bytes) -> tuple[str, str] | None:
        return batch.pending_accounts(pending) if pending in asked else None

    reservations: dict[str, _JobHolds] = {}
    for job_id, enterprise_id, *_ in rows:
        mine = ids[job_id]
        credit = tuple(
            mine[leg] for leg in (_CREDIT_HOLD, _COVER_HOLD) if found(mine[leg]) is not None
        )
        pool, cap = found(mine[_POOL_HOLD]), found(mine[_CAP_HOLD])
        fiscal_year = (
            int(pool[0].split(":", 1)[1]) if pool is not None and cap is not None else None
        )
        reservations[job_id] = _JobHolds(
            enterprise_id,
            credit,
            mine[_CAP_HOLD] if fiscal_year is not None else None,
            mine[_POOL_HOLD] if fiscal_year is not None else None,
            fiscal_year,
        )
    return reservations


def _split(
    batch: L.TransferBatch,
    usage: Usage,
    policy: VoucherPolicy,
    year: int,
    subsidy: dict[str, bool],
    holds: _JobHolds | None,
) -> tuple[Split, int]:
    """The usage's voucher and deferred parts, and the fiscal year whose pool and cap pay.

    Without a voucher hold, the voucher is `split_charge` against what the year's cap and
    pool have free. With one, the job's hold pays first and free money may add to it (in the
    hold's year, while that is the policy's); and the voucher takes at least what the job's
    credit holds cannot cover, from its voucher hold alone: so rounding each receipt's share
    down, or a policy changed since the job was accepted, never leaves usage within the
    maximum cost short of credit. Voucher money held in one year pays the job's usage after
    the year's end too: it was committed to the job when the job was accepted. Self-dealing
    gets no voucher, whatever is held.
    """
    self_dealing = usage.enterprise_uscc == usage.provider_uscc
    held = batch.pending_remaining(holds.pool) if holds is not None and holds.pool else 0
    if held == 0 or self_dealing:
        if year != policy.fiscal_year:
            return Split(0, usage.amount, OUTSIDE_FISCAL_YEAR), year
        pool = batch.account(L.pool_account(year))
        cap = batch.account(L.cap_account(year, usage.enterprise_uscc))
        assert pool is not None and cap is not None
        return split_charge(
            usage.amount,
            policy.coverage_bps,
            max(cap.debit_headroom, 0),
            max(pool.debit_headroom, 0),
            self_dealing,
            subsidy[usage.enterprise_uscc],
        ), year
    assert holds is not None and holds.fiscal_year is not None
    fiscal_year = holds.fiscal_year
    free_cap = free_pool = 0
    if fiscal_year == year == policy.fiscal_year and subsidy.get(usage.enterprise_uscc, False):
        pool = batch.account(L.pool_account(year))
        cap = batch.account(L.cap_account(year, usage.enterprise_uscc))
        assert pool is not None and cap is not None
        free_cap, free_pool = max(cap.debit_headroom, 0), max(pool.debit_headroom, 0)
    share = usage.amount * policy.coverage_bps // BPS
    credit_held = sum(batch.pending_remaining(pending) for pending in holds.credit)
    ordinary = min(share, held + free_cap, held + free_pool)
    voucher = min(usage.amount, max(ordinary, min(usage.amount - credit_held, held)))
    if voucher >= share:
        reason = COVERED
    elif free_cap <= free_pool:
        reason = CAP_EXHAUSTED
    else:
        reason = POOL_EXHAUSTED
    return Split(voucher, usage.amount - voucher, reason), fiscal_year


def _usage_legs(
    batch: L.TransferBatch,
    usage: Usage,
    split: Split,
    year: int,
    now_ms: int,
    holds: _JobHolds | None,
) -> list[Transfer]:
    cause = "receipt:" + usage.receipt_digest.hex()
    earnings = L.earnings_account(usage.provider_id)

    def leg(
        name: str,
        debit: str,
        credit: str,
        value: int,
        code: str,
        kind: str = L.POSTED,
        pending: bytes | None = None,
    ) -> Transfer:
        return Transfer(
            transfer_id(cause, name),
            debit,
            credit,
            value,
            code,
            cause,
            kind=kind,
            pending_id=pending,
            receipt_digest=usage.receipt_digest,
            at_ms=now_ms,
        )

    legs: list[Transfer] = []
    if split.voucher:
        cap = L.cap_account(year, usage.enterprise_uscc)
        used = L.entitlements_used_account(year)
        pool_hold = cap_hold = None
        if holds is not None and holds.fiscal_year == year:
            pool_hold, cap_hold = holds.pool, holds.cap
        held = 0
        if pool_hold is not None and cap_hold is not None:
            held = min(split.voucher, batch.pending_remaining(pool_hold))
        if held and pool_hold is not None and cap_hold is not None:
            # the job's voucher hold pays first: partial posts of its pool and cap holds, the
            # money passing through pool_held to the provider (unknown when it was held)
            pool, pool_held = L.pool_account(year), L.pool_held_account(year)
            legs.append(
                leg("pool-draw", pool, pool_held, held, L.USAGE_POOL, L.POST_PENDING, pool_hold)
            )
            if split.voucher > held:
                legs.append(leg("pool", pool, pool_held, split.voucher - held, L.USAGE_POOL))
            legs.append(leg("voucher", pool_held, earnings, split.voucher, L.USAGE_VOUCHER))
            legs.append(leg("cap-draw", cap, used, held, L.USAGE_CAP, L.POST_PENDING, cap_hold))
            if split.voucher > held:
                legs.append(leg("cap", cap, used, split.voucher - held, L.USAGE_CAP))
        else:
            legs.append(
                leg("voucher", L.pool_account(year), earnings, split.voucher, L.USAGE_VOUCHER)
            )
            legs.append(leg("cap", cap, used, split.voucher, L.USAGE_CAP))
    if split.deferred:
        credit = L.credit_account(usage.enterprise_id)
        legs.append(
            leg(
                "deferred",
                L.receivable_account(usage.enterprise_id),
                earnings,
                split.deferred,
                L.USAGE_DEFERRED,
            )
        )
        # the job's credit holds pay first (partial posts of its pending transfers); only
        # what they do not cover needs free credit
        left = split.deferred
        for n, pending in enumerate(holds.credit if holds is not None else ()):
            drawn = min(left, batch.pending_remaining(pending))
            if drawn:
                legs.append(
                    leg(
                        "credit-draw" if n == 0 else "credit-cover",
                        credit,
                        L.CREDIT_USED,
                        drawn,
                        L.USAGE_CREDIT,
                        L.POST_PENDING,
                        pending,
                    )
                )
                left -= drawn
        if left:
            legs.append(leg("credit", credit, L.CREDIT_USED, left, L.USAGE_CREDIT))
    return legs


def job_charges(db: sqlite_utils.Database, job_id: str) -> dict[str, int]:
    """What a job has been charged so far, and the voucher and deferred parts of it."""
    row = db.conn.execute(
        "SELECT COALESCE(SUM(amount), 0), COALESCE(SUM(voucher), 0), COALESCE(SUM(deferred), 0) "
        "FROM ledger_postings WHERE job_id = ?",
        [job_id],
    ).fetchone()
    return {
        "charged_micro_yuan": row[0],
        "voucher_micro_yuan": row[1],
        "deferred_micro_yuan": row[2],
    }


# -- payments --------------------------------------------------------------------------------


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
        raise L.InvalidTransfer(f"a payment reference is 1 to {MAX_REFERENCE} printable characters")
    return reference


def _repeat(db: sqlite_utils.Database, transfers: list[Transfer], what: str) -> list[Transfer]:
    """create_transfers, with a retry's conflict said in the caller's words."""
    try:
        return create_transfers(db, transfers)
    except IdempotencyConflict:
        first = L.get_transfers(db, [transfers[0].id]).get(transfers[0].id)
        if first is None:
            raise
        raise IdempotencyConflict(
            f"{what} was already recorded differently: {_yuan(first.amount)} from "
            f"{first.debit_account} to {first.credit_account}"
        ) from None


def record_payment(
    db: sqlite_utils.Database, enterprise_id: str, amount: int, reference: str, now_ms: int
) -> Payment:
    """Record money received from an enterprise; it restores as much of its credit.

    Idempotent by reference: the same reference with the same enterprise and amount is a no-op
    returning the first record; with others, `IdempotencyConflict`. A payment larger than what
    the enterprise owes is refused (`Overpayment`) by the receivable's balance limit.
    Statements are paid oldest first.
    """
    _check_amount(amount, "a payment")
    reference = _check_reference(reference)
    _opened_uscc(db, enterprise_id)
    cause = f"payment:{reference}"
    legs = [
        Transfer(
            transfer_id(cause, "receivable"),
            L.BANK,
            L.receivable_account(enterprise_id),
            amount,
            L.PAYMENT,
            cause,
            at_ms=now_ms,
        ),
        Transfer(
            transfer_id(cause, "credit"),
            L.CREDIT_USED,
            L.credit_account(enterprise_id),
            amount,
            L.PAYMENT_CREDIT,
            cause,
            at_ms=now_ms,
        ),
    ]
    with savepoint(db, "vouchers_payment"):
        _need(
            db,
            [*_enterprise_specs(enterprise_id), (L.BANK, L.CNY, "bank", None, L.NO_LIMIT)],
            now_ms,
        )
        try:
            stored = _repeat(db, legs, f"payment {reference!r}")
        except LimitExceeded:
            owed = _credit_figures(db, enterprise_id)["deferred_balance"]
            raise Overpayment(
                f"payment {reference!r} of {_yuan(amount)} is more than the "
                f"{_yuan(owed)} enterprise {enterprise_id} owes"
            ) from None
    return Payment(reference, enterprise_id, amount, stored[0].at_ms, tuple(t.id for t in stored))


def record_payout(
    db: sqlite_utils.Database, provider_id: str, amount: int, reference: str, now_ms: int
) -> Payment:
    """Record money paid out to a provider; never more than it has earned. Idempotent by reference."""
    _check_amount(amount, "a payout")
    reference = _check_reference(reference)
    cause = f"payout:{reference}"
    legs = [
        Transfer(
            transfer_id(cause, "earnings"),
            L.earnings_account(provider_id),
            L.BANK,
            amount,
            L.PAYOUT,
            cause,
            at_ms=now_ms,
        )
    ]
    with savepoint(db, "vouchers_payout"):
        _need(db, _earnings_specs(provider_id), now_ms)
        try:
            stored = _repeat(db, legs, f"payout {reference!r}")
        except LimitExceeded:
            balance = L.get_account(db, L.earnings_account(provider_id))
            left = balance.debit_headroom if balance else 0
            raise LedgerError(
                f"payout {reference!r} of {_yuan(amount)} is more than the "
                f"{_yuan(left)} provider {provider_id} has earned and not been paid"
            ) from None
    return Payment(reference, provider_id, amount, stored[0].at_ms, (stored[0].id,))


# -- periods and statements ------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    period: str
    party_kind: str
    party_id: str
    total: int
    voucher: int
    deferred: int
    lines: tuple[dict[str, Any], ...]
    issued_at_ms: int
    due_at_ms: int | None
    suspend_after_ms: int | None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "period": self.period,
            "party_kind": self.party_kind,
            "party_id": self.party_id,
            "total_micro_yuan": self.total,
            "voucher_micro_yuan": self.voucher,
            "deferred_micro_yuan": self.deferred,
            "lines": list(self.lines),
            "issued_at_ms": self.issued_at_ms,
        }
        if self.party_kind == "enterprise":
            out["amount_due_micro_yuan"] = self.deferred
            out["due_at_ms"] = self.due_at_ms
            out["due_date"] = _date(self.due_at_ms) if self.due_at_ms is not None else None
            out["suspend_after_ms"] = self.suspend_after_ms
        return out


@dataclass(frozen=True)
class PeriodClose:
    period: str
    closed_at_ms: int
    statements: tuple[Statement, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "closed_at_ms": self.closed_at_ms,
            "statements": [s.to_dict() for s in self.statements],
        }


_STATEMENT_COLUMNS = (
    "period, party_kind, party_id, total, voucher, deferred, lines, issued_at_ms, "
    "due_at_ms, suspend_after_ms"
)


def _statement(row: Any) -> Statement:
    lines = tuple(json.loads(row[6]))
    return Statement(row[0], row[1], row[2], row[3], row[4], row[5], lines, row[7], row[8], row[9])


def _statements(db: sqlite_utils.Database, where: str, args: list[Any]) -> list[Statement]:
    rows = db.conn.execute(
        f"SELECT {_STATEMENT_COLUMNS} FROM ledger_statements WHERE {where} "
        f"ORDER BY period, party_kind, party_id",
        args,
    )
    return [_statement(row) for row in rows]


def close_period(
    db: sqlite_utils.Database, period: str, policy: VoucherPolicy, now_ms: int, early: bool = False
) -> PeriodClose:
    """Close a month: no more usage is posted into it, and statements are issued.

    Each enterprise with usage in the period gets a statement (usage by job, voucher part,
    deferred amount due, due date = the period's end + payment_terms_days, suspension after
    grace_days more); each provider gets an earnings statement. Idempotent: closing again
    returns the first close. Refused (`PeriodNotEnded`) before the period has ended, unless
    `early` (the operator's explicit choice: later usage dated in the period is then refused).
    """
    _, end = period_bounds(period)
    if _is_closed(db, period):
        return _load_close(db, period)
    if now_ms < end and not early:
        raise PeriodNotEnded(
            f"period {period} ends at {_utc(end).isoformat()}; it cannot be closed before then"
        )
    due = end + policy.payment_terms_days * DAY_MS
    suspend = due + policy.grace_days * DAY_MS
    with savepoint(db, "vouchers_close"):
        db.conn.execute(
            "INSERT INTO ledger_period_closes (period, closed_at_ms) VALUES (?, ?)",
            [period, now_ms],
        )
        for party_kind, column in (("enterprise", "enterprise_id"), ("provider", "provider_id")):
            rows = db.conn.execute(
                f"SELECT {column}, job_id, SUM(amount), SUM(voucher), SUM(deferred), COUNT(*) "
                f"FROM ledger_postings WHERE period = ? GROUP BY {column}, job_id "
                f"ORDER BY {column}, job_id",
                [period],
            ).fetchall()
            by_party: dict[str, list[dict[str, Any]]] = {}
            for party, job, total, voucher, deferred, count in rows:
                by_party.setdefault(party, []).append(
                    {
                        "job_id": job,
                        "total_micro_yuan": total,
                        "voucher_micro_yuan": voucher,
                        "deferred_micro_yuan": deferred,
                        "receipts": count,
                    }
                )
            db.conn.executemany(
                f"INSERT INTO ledger_statements ({_STATEMENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        period,
                        party_kind,
                        party,
                        sum(line["total_micro_yuan"] for line in lines),
                        sum(line["voucher_micro_yuan"] for line in lines),
                        sum(line["deferred_micro_yuan"] for line in lines),
                        json.dumps(lines, separators=(",", ":")),
                        now_ms,
                        due if party_kind == "enterprise" else None,
                        suspend if party_kind == "enterprise" else None,
                    )
                    for party, lines in by_party.items()
                ],
            )
    return _load_close(db, period)


def _load_close(db: sqlite_utils.Database, period: str) -> PeriodClose:
    row = db.conn.execute(
        "SELECT closed_at_ms FROM ledger_period_closes WHERE period = ?", [period]
    ).fetchone()
    return PeriodClose(period, row[0], tuple(_statements(db, "period = ?", [period])))


def enterprise_statements(
    db: sqlite_utils.Database, enterprise_id: str, now_ms: int
) -> list[dict[str, Any]]:
    """The enterprise's statements, oldest first, with what is paid (oldest first) and their status:
    "paid", "open" (not yet due), "late" (past due, within grace) or "overdue" (suspended)."""
    statements = _statements(db, "party_kind = 'enterprise' AND party_id = ?", [enterprise_id])
    receivable = L.get_account(db, L.receivable_account(enterprise_id))
    unallocated = receivable.credits_posted if receivable else 0
    out = []
    for statement in statements:
        paid = min(unallocated, statement.deferred)
        unallocated -= paid
        outstanding = statement.deferred - paid
        assert statement.due_at_ms is not None and statement.suspend_after_ms is not None
        if outstanding == 0:
            status = "paid"
        elif now_ms > statement.suspend_after_ms:
            status = "overdue"
        elif now_ms > statement.due_at_ms:
            status = "late"
        else:
            status = "open"
        item = statement.to_dict()
        item.update(paid_micro_yuan=paid, outstanding_micro_yuan=outstanding, status=status)
        out.append(item)
    return out


def is_suspended(db: sqlite_utils.Database, enterprise_id: str, now_ms: int) -> tuple[bool, str]:
    """Whether the enterprise may not start jobs, and a sentence saying why (naming the statement)."""
    for item in enterprise_statements(db, enterprise_id, now_ms):
        if item["status"] == "overdue":
            grace = (item["suspend_after_ms"] - item["due_at_ms"]) // DAY_MS
            return True, (
                f"enterprise {enterprise_id} is suspended: its statement for {item['period']} "
                f"({_yuan(item['deferred_micro_yuan'])} due {item['due_date']}) still has "
                f"{_yuan(item['outstanding_micro_yuan'])} unpaid after the due date and {grace} "
                f"days' grace; paying it reinstates the account"
            )
    return False, f"enterprise {enterprise_id} has no overdue statement"


# -- reports ---------------------------------------------------------------------------------


def pool_status(db: sqlite_utils.Database, policy: VoucherPolicy) -> dict[str, int]:
    """The policy year's pool: granted (funded), used by vouchers, held for accepted jobs,
    remaining (what new jobs may still count on); and the caps granted."""
    year = policy.fiscal_year
    pool = L.get_account(db, L.pool_account(year))
    granted = pool.credits_posted if pool else 0
    used = pool.debits_posted if pool else 0
    entitlements = L.get_account(db, L.entitlements_account(year))
    companies = db.conn.execute(
        "SELECT COUNT(*) FROM ledger_accounts WHERE kind = 'cap' AND id LIKE ?", [f"cap:{year}:%"]
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
    db: sqlite_utils.Database, enterprise_id: str, policy: VoucherPolicy, now_ms: int
) -> dict[str, Any]:
    """Everything an enterprise sees of its money: voucher, credit, reservations, statements."""
    uscc = _opened_uscc(db, enterprise_id)
    year = policy.fiscal_year
    cap = L.get_account(db, L.cap_account(year, uscc))
    cap_total = max(cap.credits_posted if cap else 0, policy.per_company_cap_micro_yuan)
    cap_used = cap.debits_posted if cap else 0
    cap_held = cap.debits_pending if cap else 0
    eligible = _subsidy_allowed(db, uscc, policy)
    figures = _credit_figures(db, enterprise_id)
    reservations = []
    for row in db.conn.execute(
        "SELECT job_id FROM ledger_reservations WHERE enterprise_id = ? ORDER BY at_ms, job_id",
        [enterprise_id],
    ):
        found = _reservation(db, row[0])
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


def provider_earnings(db: sqlite_utils.Database, provider_id: str) -> dict[str, Any]:
    """What a provider earned (voucher and deferred parts), was paid out, and its statements."""
    row = db.conn.execute(
        "SELECT COALESCE(SUM(amount), 0), COALESCE(SUM(voucher), 0), COALESCE(SUM(deferred), 0), "
        "COUNT(*) FROM ledger_postings WHERE provider_id = ?",
        [provider_id],
    ).fetchone()
    account = L.get_account(db, L.earnings_account(provider_id))
    return {
        "provider_id": provider_id,
        "earned_micro_yuan": account.credits_posted if account else 0,
        "voucher_micro_yuan": row[1],
        "deferred_micro_yuan": row[2],
        "receipts": row[3],
        "paid_out_micro_yuan": account.debits_posted if account else 0,
        "balance_micro_yuan": account.debit_headroom if account else 0,
        "statements": [
            s.to_dict()
            for s in _statements(db, "party_kind = 'provider' AND party_id = ?", [provider_id])
        ],
    }
