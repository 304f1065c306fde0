"""Posting accepted receipts' usage: each charge split into its voucher and deferred parts and
posted, with the provider's earning, as one linked set of transfers named after the receipt,
so a retry is a no-op.

The pool, each company's cap and each enterprise's credit limit are balance limits of ledger
accounts, so the ledger itself refuses to overspend them. Usage belongs to the calendar month
(UTC) in which its receipt was accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from coordinator.billing.amounts import check_amount
from coordinator.billing.chart import (
    cap_spec,
    earnings_specs,
    ensure_cap,
    need_accounts,
    open_fiscal_year,
    year_specs,
)
from coordinator.billing.enterprises import credit_exceeded, open_enterprise_accounts
from coordinator.billing.errors import (
    CreditExceeded,
    IdempotencyConflict,
    InvalidTransfer,
    LimitExceeded,
    PeriodClosed,
    UnknownReceipt,
)
from coordinator.billing.linked_sets import TransferBatch
from coordinator.billing.periods import is_closed, period_of, utc
from coordinator.billing.policy import VoucherPolicy
from coordinator.billing.records import Transfer
from coordinator.billing.sql import rows_in, savepoint
from coordinator.billing.transfers import transfers_for_receipt
from coordinator.billing.usage_legs import Usage, preload, split_usage, usage_legs
from coordinator.storage import Session
from shared.ledger_names import cap_account, credit_account, pool_account


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


def _load_postings(db: Session, digests: list[bytes]) -> dict[bytes, Posting]:
    found: dict[bytes, Posting] = {}
    for row in rows_in(
        db, f"SELECT {_POSTING_COLUMNS} FROM ledger_postings WHERE receipt_digest IN", digests
    ):
        ids = tuple(t.id for t in transfers_for_receipt(db, row[0]))
        found[row[0]] = Posting(
            **dict(zip(_POSTING_COLUMNS.split(", "), row, strict=True)), transfer_ids=ids
        )
    return found


def _accepted_digests(db: Session, digests: list[bytes]) -> set[bytes]:
    return {row[0] for row in rows_in(db, "SELECT digest FROM receipts WHERE digest IN", digests)}


def post_usage(
    db: Session,
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
    check_amount(usage.amount, "a usage amount", allow_zero=True)
    if type(usage.receipt_digest) is not bytes or not 0 < len(usage.receipt_digest) <= 64:
        raise InvalidTransfer("a receipt digest is 1 to 64 bytes")
    for name in ("enterprise_id", "provider_id", "lease_id", "job_id"):
        value = getattr(usage, name)
        if type(value) is not str or not value:
            raise InvalidTransfer(f"{name} must be non-empty text")


def post_usages(
    db: Session, usages: list[Usage], *, policy: VoucherPolicy, now_ms: int
) -> list[Posting | CreditExceeded]:
    """Post accepted receipts' usage in order: voucher part, deferred part, provider's earning.

    Each usage is one linked set of transfers whose ids derive from the receipt digest: the
    voucher part moves pool → provider earnings and uses the company's cap (drawing first on
    the job's voucher holds, through pool_held); the deferred part moves the enterprise's
    receivable → provider earnings and uses its credit (drawing first on the job's credit
    holds), so usage within the job's maximum cost never needs anything that is not already
    held for it (see `coordinator.billing.usage_legs`). Each set sees the balances the earlier
    ones left, and all are written in one go. A usage whose deferred part does not fit the
    enterprise's credit gets `CreditExceeded` in its place in the answer (the caller revokes
    the lease) and posts nothing, nor do the same lease's later usages in the call. A repeat
    with the same fields returns the first posting; with other fields,
    `IdempotencyConflict`. Raises `UnknownReceipt` for a digest that is not an accepted
    receipt and `PeriodClosed` if the acceptance time falls in a closed period; then nothing
    is posted at all.
    """
    for usage in usages:
        _check_usage(usage)
    digests = [u.receipt_digest for u in usages]
    if len(set(digests)) != len(digests):
        raise InvalidTransfer("one call posts each receipt's usage once")
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
        return _complete(results)
    accepted = _accepted_digests(db, [u.receipt_digest for _, u in new])
    for _, usage in new:
        if usage.receipt_digest not in accepted:
            raise UnknownReceipt(
                f"receipt {usage.receipt_digest.hex()[:16]} is not an accepted "
                f"receipt; usage is posted only for accepted receipts"
            )
    period = period_of(now_ms)
    if is_closed(db, period):
        raise PeriodClosed(
            f"period {period} is closed; usage accepted at {now_ms} cannot be posted into it"
        )
    year = utc(now_ms).year
    with savepoint(db, "vouchers_usage"):
        subsidy = _prepare_parties(db, [u for _, u in new], policy, year, now_ms)
        batch = TransferBatch(db)
        reservations = preload(db, batch, [u for _, u in new], year)
        refused: dict[str, CreditExceeded] = {}
        rows = []
        for n, usage in new:
            if usage.lease_id in refused:  # its amount builds on the refused usage before it
                results[n] = refused[usage.lease_id]
                continue
            holds = reservations.get(usage.job_id)
            if holds is not None and holds.enterprise_id != usage.enterprise_id:
                holds = None
            split, fiscal_year = split_usage(batch, usage, policy, year, subsidy, holds)
            legs = usage_legs(batch, usage, split, fiscal_year, now_ms, holds)
            try:
                batch.add(legs)
            except LimitExceeded as exc:
                if exc.account != credit_account(usage.enterprise_id):
                    raise
                batch.flush()  # the refusal's figures include the usage posted before it
                results[n] = refused[usage.lease_id] = credit_exceeded(
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
            f"INSERT INTO ledger_postings ({_POSTING_COLUMNS}) "
            f"VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
    return _complete(results)


def _complete(
    results: list[Posting | CreditExceeded | None],
) -> list[Posting | CreditExceeded]:
    """The answers, once every usage has one."""
    complete = [result for result in results if result is not None]
    if len(complete) != len(results):  # a bug, not bad input: refuse the batch rather than drop
        raise RuntimeError(f"{len(results) - len(complete)} usages were left without an answer")
    return complete


def _prepare_parties(
    db: Session, usages: list[Usage], policy: VoucherPolicy, year: int, now_ms: int
) -> dict[str, bool]:
    """Open what the usages' parties need, asking for all of them at once; returns whether each
    company may be subsidised."""
    enterprises = sorted({(u.enterprise_id, u.enterprise_uscc) for u in usages})
    opened = dict(
        rows_in(
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
        rows_in(db, "SELECT id, uscc FROM providers WHERE id IN", sorted({p for p, _ in providers}))
    )
    for provider_id, uscc in providers:
        if provider_id in registered and registered[provider_id] != uscc:
            # self-dealing is judged on USCCs, so the caller's must be the registered one
            raise IdempotencyConflict(
                f"provider {provider_id} is registered under USCC "
                f"{registered[provider_id]}, not {uscc}"
            )
    need_accounts(
        db,
        list(
            {
                spec[0]: spec
                for provider_id, _ in providers
                for spec in earnings_specs(provider_id)
            }.values()
        ),
        now_ms,
    )
    if year != policy.fiscal_year:
        return {}
    usccs = sorted({u.enterprise_uscc for u in usages})
    accounts = need_accounts(
        db, [*year_specs(year), *(cap_spec(year, uscc) for uscc in usccs)], now_ms
    )
    if accounts[pool_account(year)].credits_posted < policy.pool_total_micro_yuan:
        open_fiscal_year(db, policy, now_ms)
    for uscc in usccs:
        if accounts[cap_account(year, uscc)].credits_posted < policy.per_company_cap_micro_yuan:
            ensure_cap(db, uscc, policy, now_ms)
    providing = {
        row[0] for row in rows_in(db, "SELECT DISTINCT uscc FROM providers WHERE uscc IN", usccs)
    }
    return {uscc: policy.providers_may_be_subsidised or uscc not in providing for uscc in usccs}


def job_charges(db: Session, job_id: str) -> dict[str, int]:
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
