"""Linked sets of transfers: applied in order against the balance limits, written whole or not
at all.

Each account's balances are stored in the same savepoint as the transfers that move them. A
transfer that would take an account past its limit is refused (`LimitExceeded`), so the limits
hold by construction, not by review. Limits are checked after each transfer in order, as
TigerBeetle does for a linked chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from coordinator.billing.accounts import get_accounts
from coordinator.billing.errors import (
    IdempotencyConflict,
    InvalidTransfer,
    LedgerOverflow,
    LimitExceeded,
    PendingError,
    UnknownAccount,
)
from coordinator.billing.pending import OpenPending, load_pending, load_pendings
from coordinator.billing.records import MAX_BALANCE, Account, Transfer
from coordinator.billing.sql import savepoint
from coordinator.billing.transfers import TRANSFER_COLUMNS, get_transfers, validate_transfer
from coordinator.storage import Session
from shared.ledger_names import (
    CREDITS_MUST_NOT_EXCEED_DEBITS,
    DEBITS_MUST_NOT_EXCEED_CREDITS,
    PENDING,
    POST_PENDING,
    POSTED,
    VOID_PENDING,
)


@dataclass
class _Working:
    """An account's balances while a linked set is applied in memory."""

    account: Account
    balances: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        a = self.account
        self.balances = [a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted]


def create_transfers(db: Session, transfers: Sequence[Transfer]) -> list[Transfer]:
    """Write a linked set of transfers: all of them, applied in order, or none.

    If every transfer of the set already exists with the same fields, nothing is written and
    the stored transfers are returned (a retry); if any id exists with other fields, or only
    part of the set exists, `IdempotencyConflict`. Limits are checked after each transfer
    in order, as TigerBeetle does for a linked chain.
    """
    transfers = list(transfers)
    if not transfers:
        return []
    for t in transfers:
        validate_transfer(t)
    ids = [t.id for t in transfers]
    if len(set(ids)) != len(ids):
        raise InvalidTransfer("a linked set names one transfer id twice")
    existing = get_transfers(db, ids)
    if existing:
        for t in transfers:
            old = existing.get(t.id)
            if old is not None and old.differences(t):
                raise IdempotencyConflict(
                    f"transfer {t.id.hex()[:16]} ({old.code}, cause {old.cause}) already exists "
                    f"with a different {', '.join(old.differences(t))}; a retry must repeat "
                    f"the first request exactly"
                )
        if len(existing) == len(transfers):
            return [existing[t.id] for t in transfers]
        raise IdempotencyConflict(
            "part of this linked set of transfers already exists; a linked set is written "
            "whole or not at all, so its ids must not be reused"
        )
    batch = TransferBatch(db)
    batch.add(transfers)
    batch.flush()
    return transfers


class TransferBatch:
    """Many linked sets applied in memory, one after another, then written in one go.

    `add` applies a linked set to the working balances, all of it or (raising) none of it,
    so a later set sees the balances the earlier ones left; `flush` inserts the sets added
    since the last flush and stores the balances they moved. The caller holds the
    transaction and gives new transfer ids (the primary key refuses a reused one at flush).
    """

    def __init__(self, db: Session) -> None:
        self.db = db
        self._working: dict[str, _Working] = {}
        self._opens: dict[bytes, OpenPending] = {}
        self._absent: set[bytes] = set()
        self._unwritten: list[Transfer] = []
        self._touched: set[str] = set()

    def account(self, account_id: str) -> Account | None:
        """The account with the balances this batch has moved so far."""
        working = self._load([account_id]).get(account_id)
        if working is None:
            return None
        return Account(
            *(
                getattr(working.account, name)
                for name in ("id", "ledger", "kind", "owner", "flags")
            ),
            *working.balances,
        )

    def preload(self, account_ids: Sequence[str], pending_ids: Sequence[bytes]) -> None:
        """Read these accounts and pending transfers now, in a few queries, not one by one."""
        self._load(account_ids)
        missing = [p for p in set(pending_ids) if p not in self._opens]
        self._opens.update(load_pendings(self.db, missing))
        # asked and not found: no need to ask again for each usage
        self._absent |= {p for p in missing if p not in self._opens}

    def pending_remaining(self, pending_id: bytes) -> int:
        found = self._open(pending_id)
        return 0 if found is None else found.amount - found.resolved

    def pending_accounts(self, pending_id: bytes) -> tuple[str, str] | None:
        """The (debit, credit) accounts a pending transfer holds on, or None if there is none."""
        found = self._open(pending_id)
        return None if found is None else (found.debit_account, found.credit_account)

    def _load(self, account_ids: Sequence[str]) -> dict[str, _Working]:
        missing = [a for a in account_ids if a not in self._working]
        if missing:
            for account_id, account in get_accounts(self.db, sorted(set(missing))).items():
                self._working[account_id] = _Working(account)
        return self._working

    def _open(self, pending_id: bytes) -> OpenPending | None:
        if pending_id not in self._opens:
            if pending_id in self._absent:
                return None
            found = load_pending(self.db, pending_id)
            if found is None:
                return None
            self._opens[pending_id] = found
        return self._opens[pending_id]

    def add(self, transfers: Sequence[Transfer]) -> None:
        for t in transfers:
            validate_transfer(t)
        working = self._load([a for t in transfers for a in (t.debit_account, t.credit_account)])
        touched = {a for t in transfers for a in (t.debit_account, t.credit_account)}
        saved = {a: working[a].balances.copy() for a in touched if a in working}
        resolved = {t.pending_id for t in transfers if t.pending_id is not None}
        saved_opens = {
            p: OpenPending(o.debit_account, o.credit_account, o.amount, o.resolved, o.voided)
            for p in resolved
            if (o := self._opens.get(p)) is not None
        }
        try:
            for t in transfers:
                self._apply(t, working)
        except BaseException:
            for account_id, balances in saved.items():
                working[account_id].balances = balances
            for t in transfers:
                self._opens.pop(t.id, None)
                if t.pending_id is not None:
                    self._opens.pop(t.pending_id, None)
            self._opens.update(saved_opens)
            raise
        self._unwritten.extend(transfers)
        self._touched |= touched

    def _apply(self, t: Transfer, working: dict[str, _Working]) -> None:
        for account_id in (t.debit_account, t.credit_account):
            if account_id not in working:
                raise UnknownAccount(
                    f"transfer {t.code} names account {account_id}, which does not exist"
                )
        debit, credit = working[t.debit_account], working[t.credit_account]
        if debit.account.ledger != credit.account.ledger:
            raise InvalidTransfer(
                f"transfer {t.code} would cross ledgers ({t.debit_account} is on "
                f"{debit.account.ledger}, {t.credit_account} on {credit.account.ledger})"
            )
        amount = t.amount
        if t.kind == POSTED:
            debit.balances[1] += amount
            credit.balances[3] += amount
        elif t.kind == PENDING:
            debit.balances[0] += amount
            credit.balances[2] += amount
            self._opens[t.id] = OpenPending(t.debit_account, t.credit_account, amount, 0, False)
        else:
            assert t.pending_id is not None
            pending = self._open(t.pending_id)
            if pending is None:
                raise PendingError(
                    f"transfer {t.code} resolves {t.pending_id.hex()[:16]}, "
                    f"which is not a pending transfer"
                )
            if (pending.debit_account, pending.credit_account) != (
                t.debit_account,
                t.credit_account,
            ):
                raise PendingError(
                    f"transfer {t.code} must move the same accounts as the pending "
                    f"transfer it resolves"
                )
            remaining = pending.amount - pending.resolved
            if pending.voided or amount > remaining:
                raise PendingError(
                    f"transfer {t.code} resolves {amount} µ¥ of a pending transfer "
                    f"that holds only {remaining} µ¥"
                )
            if t.kind == VOID_PENDING and amount != remaining:
                raise PendingError(
                    "a void releases the whole remainder of its pending transfer "
                    f"({remaining} µ¥), not {amount} µ¥"
                )
            pending.resolved += amount
            pending.voided = t.kind == VOID_PENDING
            debit.balances[0] -= amount
            credit.balances[2] -= amount
            if t.kind == POST_PENDING:
                debit.balances[1] += amount
                credit.balances[3] += amount
        for side in (debit, credit):
            if max(side.balances) > MAX_BALANCE:
                raise LedgerOverflow(
                    f"transfer {t.code} would take account {side.account.id} past {MAX_BALANCE} µ¥"
                )
        grows = t.kind in (POSTED, PENDING)
        d_pending, d_posted, c_pending, c_posted = debit.balances
        if (
            grows
            and debit.account.flags == DEBITS_MUST_NOT_EXCEED_CREDITS
            and d_pending + d_posted > c_posted
        ):
            raise LimitExceeded(
                f"transfer {t.code} of {amount} µ¥ would make the debits of {debit.account.id} "
                f"({d_pending + d_posted} µ¥ pending and posted) exceed its credits "
                f"({c_posted} µ¥)",
                account=debit.account.id,
                flag=DEBITS_MUST_NOT_EXCEED_CREDITS,
                transfer=t,
            )
        d_pending, d_posted, c_pending, c_posted = credit.balances
        if (
            grows
            and credit.account.flags == CREDITS_MUST_NOT_EXCEED_DEBITS
            and c_pending + c_posted > d_posted
        ):
            raise LimitExceeded(
                f"transfer {t.code} of {amount} µ¥ would make the credits of {credit.account.id} "
                f"({c_pending + c_posted} µ¥ pending and posted) exceed its debits ({d_posted} µ¥)",
                account=credit.account.id,
                flag=CREDITS_MUST_NOT_EXCEED_DEBITS,
                transfer=t,
            )

    def flush(self) -> None:
        """Insert what was added since the last flush and store the balances it moved."""
        if not self._unwritten:
            return
        with savepoint(self.db, "ledger_link"):
            self.db.conn.executemany(
                f"INSERT INTO ledger_transfers ({TRANSFER_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        t.id,
                        t.debit_account,
                        t.credit_account,
                        t.amount,
                        t.code,
                        t.cause,
                        t.kind,
                        t.pending_id,
                        t.receipt_digest,
                        t.at_ms,
                    )
                    for t in self._unwritten
                ],
            )
            self.db.conn.executemany(
                "UPDATE ledger_accounts SET debits_pending = ?, debits_posted = ?, "
                "credits_pending = ?, credits_posted = ? WHERE id = ?",
                [(*self._working[a].balances, a) for a in sorted(self._touched)],
            )
        self._unwritten = []
        self._touched = set()
