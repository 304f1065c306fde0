"""How one usage is paid: the parts `split_charge` gives it, drawn first from its job's
reservation, and the transfers that post them.

The voucher part moves pool → provider earnings and uses the company's cap, drawing first on
the job's voucher holds (partial posts of its pool and cap holds, the money passing through
pool_held to the provider); the deferred part moves the enterprise's receivable → provider
earnings and uses its credit, drawing first on the job's credit holds. So usage within the
job's maximum cost never needs anything that is not already held for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.billing.linked_sets import TransferBatch
from coordinator.billing.periods import utc
from coordinator.billing.policy import (
    BPS,
    CAP_EXHAUSTED,
    COVERED,
    OUTSIDE_FISCAL_YEAR,
    POOL_EXHAUSTED,
    Split,
    VoucherPolicy,
    split_charge,
)
from coordinator.billing.records import Transfer, transfer_id
from coordinator.billing.reservations import CAP_HOLD, COVER_HOLD, CREDIT_HOLD, POOL_HOLD, hold_ids
from coordinator.billing.sql import rows_in
from coordinator.storage import Session
from shared.ledger_names import (
    CREDIT_USED,
    POST_PENDING,
    POSTED,
    USAGE_CAP,
    USAGE_CREDIT,
    USAGE_DEFERRED,
    USAGE_POOL,
    USAGE_VOUCHER,
    account_suffix,
    cap_account,
    credit_account,
    earnings_account,
    entitlements_used_account,
    pool_account,
    pool_held_account,
    receipt_cause,
    receivable_account,
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


@dataclass(frozen=True)
class JobHolds:
    """A job's reservation as its postings draw on it: the pending transfer ids that exist."""

    enterprise_id: str
    credit: tuple[bytes, ...]  # the credit hold, then the self-dealing cover, those that exist
    cap: bytes | None
    pool: bytes | None
    fiscal_year: int | None  # the year whose cap and pool hold its voucher share


def preload(
    db: Session, batch: TransferBatch, usages: list[Usage], year: int
) -> dict[str, JobHolds]:
    """Read every account and hold the usages may move, in a few queries; returns each job's
    holds. A voucher hold is in the fiscal year of its reservation (see `reserve_job`)."""
    rows = rows_in(
        db,
        "SELECT job_id, enterprise_id, voucher_estimate, transfer_id, at_ms "
        "FROM ledger_reservations WHERE job_id IN",
        sorted({u.job_id for u in usages}),
    )
    ids = {job_id: hold_ids(job_id) for job_id, *_ in rows}
    wanted: list[bytes] = []
    accounts = {
        pool_account(year),
        pool_held_account(year),
        entitlements_used_account(year),
        CREDIT_USED,
    }
    held_years = {job_id: utc(at_ms).year for job_id, _, voucher, _, at_ms in rows if voucher}
    for job_id, _, voucher, credit, _ in rows:
        if credit is not None:
            wanted.append(ids[job_id][CREDIT_HOLD])
        if voucher:
            wanted += [ids[job_id][leg] for leg in (COVER_HOLD, CAP_HOLD, POOL_HOLD)]
    for u in usages:
        accounts |= {
            cap_account(year, u.enterprise_uscc),
            earnings_account(u.provider_id),
            receivable_account(u.enterprise_id),
            credit_account(u.enterprise_id),
        }
        held_year = held_years.get(u.job_id)
        if held_year is not None and held_year != year:
            accounts |= {
                pool_account(held_year),
                pool_held_account(held_year),
                entitlements_used_account(held_year),
                cap_account(held_year, u.enterprise_uscc),
            }
    batch.preload(sorted(accounts), wanted)
    asked = set(wanted)

    def found(pending: bytes) -> tuple[str, str] | None:
        return batch.pending_accounts(pending) if pending in asked else None

    reservations: dict[str, JobHolds] = {}
    for job_id, enterprise_id, *_ in rows:
        mine = ids[job_id]
        credit = tuple(
            mine[leg] for leg in (CREDIT_HOLD, COVER_HOLD) if found(mine[leg]) is not None
        )
        pool, cap = found(mine[POOL_HOLD]), found(mine[CAP_HOLD])
        fiscal_year = int(account_suffix(pool[0])) if pool is not None and cap is not None else None
        reservations[job_id] = JobHolds(
            enterprise_id,
            credit,
            mine[CAP_HOLD] if fiscal_year is not None else None,
            mine[POOL_HOLD] if fiscal_year is not None else None,
            fiscal_year,
        )
    return reservations


def split_usage(
    batch: TransferBatch,
    usage: Usage,
    policy: VoucherPolicy,
    year: int,
    subsidy: dict[str, bool],
    holds: JobHolds | None,
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
        pool = batch.account(pool_account(year))
        cap = batch.account(cap_account(year, usage.enterprise_uscc))
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
        pool = batch.account(pool_account(year))
        cap = batch.account(cap_account(year, usage.enterprise_uscc))
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


def usage_legs(
    batch: TransferBatch,
    usage: Usage,
    split: Split,
    year: int,
    now_ms: int,
    holds: JobHolds | None,
) -> list[Transfer]:
    cause = receipt_cause(usage.receipt_digest)
    earnings = earnings_account(usage.provider_id)

    def leg(
        name: str,
        debit: str,
        credit: str,
        value: int,
        code: str,
        kind: str = POSTED,
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
        cap = cap_account(year, usage.enterprise_uscc)
        used = entitlements_used_account(year)
        pool_hold = cap_hold = None
        if holds is not None and holds.fiscal_year == year:
            pool_hold, cap_hold = holds.pool, holds.cap
        held = 0
        if pool_hold is not None and cap_hold is not None:
            held = min(split.voucher, batch.pending_remaining(pool_hold))
        if held and pool_hold is not None and cap_hold is not None:
            # the job's voucher hold pays first: partial posts of its pool and cap holds, the
            # money passing through pool_held to the provider (unknown when it was held)
            pool, pool_held = pool_account(year), pool_held_account(year)
            legs.append(
                leg("pool-draw", pool, pool_held, held, USAGE_POOL, POST_PENDING, pool_hold)
            )
            if split.voucher > held:
                legs.append(leg("pool", pool, pool_held, split.voucher - held, USAGE_POOL))
            legs.append(leg("voucher", pool_held, earnings, split.voucher, USAGE_VOUCHER))
            legs.append(leg("cap-draw", cap, used, held, USAGE_CAP, POST_PENDING, cap_hold))
            if split.voucher > held:
                legs.append(leg("cap", cap, used, split.voucher - held, USAGE_CAP))
        else:
            legs.append(leg("voucher", pool_account(year), earnings, split.voucher, USAGE_VOUCHER))
            legs.append(leg("cap", cap, used, split.voucher, USAGE_CAP))
    if split.deferred:
        credit = credit_account(usage.enterprise_id)
        legs.append(
            leg(
                "deferred",
                receivable_account(usage.enterprise_id),
                earnings,
                split.deferred,
                USAGE_DEFERRED,
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
                        CREDIT_USED,
                        drawn,
                        USAGE_CREDIT,
                        POST_PENDING,
                        pending,
                    )
                )
                left -= drawn
        if left:
            legs.append(leg("credit", credit, CREDIT_USED, left, USAGE_CREDIT))
    return legs
