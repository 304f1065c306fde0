"""The city's voucher rules (`VoucherPolicy`, the coordinator TOML's [vouchers] table) and the
split of each charge they make into the part the voucher pool pays and the part the enterprise
pays later (`split_charge`).

Nobody applies for a voucher: every registered enterprise simply has its year's entitlement,
one per USCC.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from coordinator.billing.amounts import MAX_AMOUNT
from coordinator.billing.errors import VoucherPolicyError
from shared.money import MICRO_PER_YUAN
from shared.settings_file import describe, read_table, setting

BPS = 10_000

# why a charge got less voucher coverage than its share (or "covered" when it got all of it)
COVERED = "covered"
NO_COVERAGE = "no_coverage"
SELF_DEALING = "self_dealing"
NOT_ELIGIBLE = "provider_not_subsidised"
CAP_EXHAUSTED = "cap_exhausted"
POOL_EXHAUSTED = "pool_exhausted"
OUTSIDE_FISCAL_YEAR = "outside_fiscal_year"


def _this_year() -> int:
    return datetime.now(UTC).year


@dataclass(frozen=True)
class VoucherPolicy:
    """The city's voucher rules for one fiscal year, from the coordinator TOML's [vouchers]
    table."""

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
                f"[vouchers] coverage_bps must be between 0 and {BPS} (100%), "
                f"not {self.coverage_bps}"
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
                    f"[vouchers] has no setting {name!r}; the settings are "
                    f"{', '.join(sorted(known))}"
                )
        return cls(**table)


def load_voucher_policy(path: Path | None) -> VoucherPolicy:
    """The [vouchers] table of the coordinator's TOML file (all defaults without a file or
    table)."""
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
