"""The ledger's vocabulary, shared by the ledger that writes it, the API that shows it and the
auditor that re-adds it: ledgers, limit flags, transfer kinds and codes, and the chart of
accounts (each account's kind and how its name is built from the year or party it belongs to).
"""

from __future__ import annotations

# -- ledgers (an account's currency; a transfer never crosses them) --------------------------

CNY = "cny"
VOUCHER_QUOTA = "voucher_quota"
CREDIT = "credit"
LEDGERS = (CNY, VOUCHER_QUOTA, CREDIT)

# -- balance limits an account may carry -----------------------------------------------------

NO_LIMIT = ""
DEBITS_MUST_NOT_EXCEED_CREDITS = "debits_must_not_exceed_credits"
CREDITS_MUST_NOT_EXCEED_DEBITS = "credits_must_not_exceed_debits"
FLAGS = (NO_LIMIT, DEBITS_MUST_NOT_EXCEED_CREDITS, CREDITS_MUST_NOT_EXCEED_DEBITS)

# -- transfer kinds (two-phase: pending, then posted or voided) ------------------------------

POSTED = "posted"
PENDING = "pending"
POST_PENDING = "post_pending"
VOID_PENDING = "void_pending"
KINDS = (POSTED, PENDING, POST_PENDING, VOID_PENDING)

# -- transfer codes; every code starting with USAGE_PREFIX must name an accepted receipt -----

POOL_FUNDING = "pool_funding"
ENTITLEMENT = "entitlement"
CREDIT_LIMIT = "credit_limit"
USAGE_VOUCHER = "usage_voucher"
USAGE_POOL = "usage_pool"
USAGE_CAP = "usage_cap"
USAGE_DEFERRED = "usage_deferred"
USAGE_CREDIT = "usage_credit"
RESERVATION = "reservation"
RESERVATION_COVER = "reservation_cover"
PAYMENT = "payment"
PAYMENT_CREDIT = "payment_credit"
PAYOUT = "payout"
USAGE_PREFIX = "usage_"
# the two usage codes that charge the enterprise for a job (voucher part, deferred part)
USAGE_CHARGE_CODES = (USAGE_VOUCHER, USAGE_DEFERRED)

# -- the chart of accounts: kinds, and names built from a fiscal year or a party -------------

BANK = "bank"
CREDIT_USED = "credit_used"
TREASURY = "treasury"
POOL = "pool"
POOL_HELD = "pool_held"
ENTITLEMENTS = "entitlements"
ENTITLEMENTS_USED = "entitlements_used"
CAP = "cap"
EARNINGS = "earnings"
RECEIVABLE = "receivable"
CREDIT_ACCOUNT = "credit"
CREDIT_LINE = "credit_line"


def treasury_account(fiscal_year: int) -> str:
    return f"{TREASURY}:{fiscal_year}"


def pool_account(fiscal_year: int) -> str:
    return f"{POOL}:{fiscal_year}"


def pool_held_account(fiscal_year: int) -> str:
    return f"{POOL_HELD}:{fiscal_year}"


def entitlements_account(fiscal_year: int) -> str:
    return f"{ENTITLEMENTS}:{fiscal_year}"


def entitlements_used_account(fiscal_year: int) -> str:
    return f"{ENTITLEMENTS_USED}:{fiscal_year}"


def cap_account(fiscal_year: int, uscc: str) -> str:
    return f"{CAP}:{fiscal_year}:{uscc}"


def earnings_account(provider_id: str) -> str:
    return f"{EARNINGS}:{provider_id}"


def receivable_account(enterprise_id: str) -> str:
    return f"{RECEIVABLE}:{enterprise_id}"


def credit_account(enterprise_id: str) -> str:
    return f"{CREDIT_ACCOUNT}:{enterprise_id}"


def credit_line_account(enterprise_id: str) -> str:
    return f"{CREDIT_LINE}:{enterprise_id}"


def account_kind(account_id: str) -> str:
    """The kind an account's name starts with (`pool:2026` -> `pool`)."""
    return account_id.split(":", 1)[0]


def account_suffix(account_id: str) -> str:
    """What follows the kind in an account's name: its year, or the party it belongs to."""
    return account_id.split(":", 1)[1]


def name_pattern(kind: str) -> str:
    """A SQL LIKE pattern matching every name that starts with `kind:` (an account or a cause)."""
    return f"{kind}:%"


# -- causes: what made a transfer; a transfer's id derives from its cause and its leg --------

JOB_CAUSE = "job"


def job_cause(job_id: str) -> str:
    """The cause of a job's reservation: its holds, their draws and their release."""
    return f"{JOB_CAUSE}:{job_id}"


def receipt_cause(receipt_digest: bytes) -> str:
    """The cause of the transfers posting one accepted receipt's usage."""
    return f"receipt:{receipt_digest.hex()}"


def payment_cause(reference: str) -> str:
    return f"payment:{reference}"


def payout_cause(reference: str) -> str:
    return f"payout:{reference}"


def credit_limit_cause(enterprise_id: str) -> str:
    return f"credit-limit:{enterprise_id}"


def entitlement_cause(fiscal_year: int, uscc: str) -> str:
    """The cause of granting a company its cap for the year."""
    return f"{ENTITLEMENT}:{fiscal_year}:{uscc}"


def pool_funding_cause(fiscal_year: int) -> str:
    """The cause of funding the year's pool from the treasury: the pool's own name."""
    return pool_account(fiscal_year)
