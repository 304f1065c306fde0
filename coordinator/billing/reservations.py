"""Reservations: when a job is accepted, `reserve_job` holds everything it may need, as pending
transfers named after the job, so the sum of accepted jobs can always be paid and a job that
cannot be held is refused at submission.

The holds are its voucher share on its company's cap (cap → entitlements_used) and on the pool
(pool → pool_held: the provider, whose earnings it will credit, is not known yet), and the rest
of its maximum cost on its enterprise's credit (credit → credit_used). Usage postings draw them
down (see `coordinator.billing.usage`); `settle_job` at the job's end voids what is left.
Self-dealing is settled at acceptance too (see `reserve_job` and `cover_self_dealing`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from coordinator.billing.amounts import check_amount, yuan
from coordinator.billing.chart import ensure_year
from coordinator.billing.enterprises import (
    credit_exceeded,
    enterprise_uscc,
    is_provider,
    subsidy_allowed,
)
from coordinator.billing.errors import (
    IdempotencyConflict,
    InvalidTransfer,
    LimitExceeded,
    Suspended,
)
from coordinator.billing.linked_sets import create_transfers
from coordinator.billing.pending import holds
from coordinator.billing.periods import utc
from coordinator.billing.policy import VoucherPolicy, split_charge
from coordinator.billing.records import Transfer, transfer_id
from coordinator.billing.sql import savepoint
from coordinator.billing.statements import is_suspended
from coordinator.storage import Session
from shared.ledger_names import (
    CREDIT_USED,
    PENDING,
    RESERVATION,
    RESERVATION_COVER,
    VOID_PENDING,
    account_suffix,
    cap_account,
    credit_account,
    entitlements_used_account,
    job_cause,
    pool_account,
    pool_held_account,
)
from shared.uscc import validate_uscc

# the legs of a job's reservation, each a pending transfer whose id derives from the job
CREDIT_HOLD = "reserve"
CAP_HOLD = "reserve-cap"
POOL_HOLD = "reserve-pool"
COVER_HOLD = "reserve-cover"
HOLDS = (CREDIT_HOLD, COVER_HOLD, CAP_HOLD, POOL_HOLD)


@functools.lru_cache(maxsize=65_536)
def hold_ids(job_id: str) -> dict[str, bytes]:
    """The ids of the job's holds (hashes, so cached: every posting of the job asks again).
    The answer is shared; callers never change it."""
    cause = job_cause(job_id)
    return {leg: transfer_id(cause, leg) for leg in HOLDS}


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


def load_reservation(db: Session, job_id: str) -> Reservation | None:
    row = db.conn.execute(
        "SELECT job_id, enterprise_id, max_cost, voucher_estimate, amount, transfer_id "
        "FROM ledger_reservations WHERE job_id = ?",
        [job_id],
    ).fetchone()
    if row is None:
        return None
    ids = hold_ids(job_id)
    found = holds(db, list(ids.values()))
    left = {leg: found[i].remaining if i in found else 0 for leg, i in ids.items()}
    pool = found.get(ids[POOL_HOLD])
    year = int(account_suffix(pool.debit_account)) if pool is not None else None
    cover = found[ids[COVER_HOLD]].amount if ids[COVER_HOLD] in found else 0
    return Reservation(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        left[CREDIT_HOLD] + left[COVER_HOLD],
        row[5],
        left[POOL_HOLD],
        cover,
        year,
    )


def reserve_job(
    db: Session,
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
    check_amount(max_cost, "a job's maximum cost", allow_zero=True)
    if type(job_id) is not str or not job_id:
        raise InvalidTransfer("a job id is non-empty text")
    found = load_reservation(db, job_id)
    if found is not None:
        if (found.enterprise_id, found.max_cost) != (enterprise_id, max_cost):
            raise IdempotencyConflict(
                f"job {job_id} already has a reservation for {found.enterprise_id} with maximum "
                f"cost {yuan(found.max_cost)}"
            )
        return found
    with savepoint(db, "vouchers_reserve"):
        uscc = enterprise_uscc(db, enterprise_id, policy, now_ms)
        suspended, why = is_suspended(db, enterprise_id, now_ms)
        if suspended:
            raise Suspended(why)
        estimate = 0
        own = is_provider(db, uscc)
        year = policy.fiscal_year
        if utc(now_ms).year == year:
            pool, cap = ensure_year(db, uscc, policy, now_ms)
            if not own:
                estimate = split_charge(
                    max_cost,
                    policy.coverage_bps,
                    max(cap.debit_headroom, 0),
                    max(pool.debit_headroom, 0),
                    False,
                    subsidy_allowed(db, uscc, policy),
                ).voucher
        amount = max_cost - estimate
        cause = job_cause(job_id)
        ids = hold_ids(job_id)
        legs = []
        if estimate:
            legs += [
                Transfer(
                    ids[CAP_HOLD],
                    cap_account(year, uscc),
                    entitlements_used_account(year),
                    estimate,
                    RESERVATION,
                    cause,
                    kind=PENDING,
                    at_ms=now_ms,
                ),
                Transfer(
                    ids[POOL_HOLD],
                    pool_account(year),
                    pool_held_account(year),
                    estimate,
                    RESERVATION,
                    cause,
                    kind=PENDING,
                    at_ms=now_ms,
                ),
            ]
        pending: bytes | None = None
        if amount > 0:
            pending = ids[CREDIT_HOLD]
            legs.append(
                Transfer(
                    pending,
                    credit_account(enterprise_id),
                    CREDIT_USED,
                    amount,
                    RESERVATION,
                    cause,
                    kind=PENDING,
                    at_ms=now_ms,
                )
            )
        try:
            create_transfers(db, legs)
        except LimitExceeded as exc:
            if exc.account != credit_account(enterprise_id):
                raise
            whole = (
                (
                    " (the whole maximum cost: the company also provides compute, and no "
                    "voucher pays for compute it may win itself)"
                )
                if own and not estimate
                else (
                    f" (its maximum cost {yuan(max_cost)} less the voucher {yuan(estimate)} held "
                    f"for it)"
                    if estimate
                    else ""
                )
            )
            raise credit_exceeded(
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


def settle_job(db: Session, job_id: str, now_ms: int) -> Reservation | None:
    """Release what the job's usage did not draw of its holds (voids, one linked set); idempotent.

    Returns the reservation as it now stands, or None if the job never had one.
    """
    found = load_reservation(db, job_id)
    if found is None or found.held == 0:
        return found
    cause = job_cause(job_id)
    ids = hold_ids(job_id)
    open_holds = holds(db, list(ids.values()))
    legs = [
        Transfer(
            transfer_id(cause, f"release-{leg}" if leg != CREDIT_HOLD else "release"),
            hold.debit_account,
            hold.credit_account,
            hold.remaining,
            RESERVATION,
            cause,
            kind=VOID_PENDING,
            pending_id=hold.id,
            at_ms=now_ms,
        )
        for leg, hold in ((leg, open_holds.get(ids[leg])) for leg in HOLDS)
        if hold is not None and hold.remaining > 0
    ]
    create_transfers(db, legs)
    return load_reservation(db, job_id)


def cover_self_dealing(db: Session, uscc: str, now_ms: int) -> list[Reservation]:
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
            ids = hold_ids(job_id)
            found = holds(db, [ids[CAP_HOLD], ids[POOL_HOLD], ids[COVER_HOLD]])
            cap, pool = found.get(ids[CAP_HOLD]), found.get(ids[POOL_HOLD])
            if ids[COVER_HOLD] in found or cap is None or pool is None or pool.remaining == 0:
                continue
            cause = job_cause(job_id)
            legs = [
                Transfer(
                    transfer_id(cause, f"cover-{hold.id.hex()}"),
                    hold.debit_account,
                    hold.credit_account,
                    hold.remaining,
                    RESERVATION_COVER,
                    cause,
                    kind=VOID_PENDING,
                    pending_id=hold.id,
                    at_ms=now_ms,
                )
                for hold in (cap, pool)
            ]
            legs.append(
                Transfer(
                    ids[COVER_HOLD],
                    credit_account(enterprise_id),
                    CREDIT_USED,
                    pool.remaining,
                    RESERVATION_COVER,
                    cause,
                    kind=PENDING,
                    at_ms=now_ms,
                )
            )
            try:
                create_transfers(db, legs)
            except LimitExceeded:
                raise credit_exceeded(
                    db,
                    enterprise_id,
                    pool.remaining,
                    f"company {code} is becoming a provider, so the voucher held for job "
                    f"{job_id} must be held on its credit instead: that hold",
                ) from None
            reservation = load_reservation(db, job_id)
            assert reservation is not None
            moved.append(reservation)
    return moved
