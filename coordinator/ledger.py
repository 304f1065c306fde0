"""The ledger: accounts and immutable transfers in integer micro-yuan, after TigerBeetle.

A transfer debits one account and credits another by a positive amount, names a code (what
kind of movement) and a cause (what made it: a receipt digest, a payment reference, a job),
and has an id derived from that cause, so a retry is a no-op that returns the first result
and a retry with other fields is refused. Transfers are only ever inserted; the schema's
triggers refuse UPDATE and DELETE, so a mistake is corrected by a new transfer.

Each account keeps its four balances (debits/credits, pending/posted) in the same savepoint
as the transfers that move them, and may carry one balance limit:
`debits_must_not_exceed_credits` (debits pending + posted ≤ credits posted) or
`credits_must_not_exceed_debits` (credits pending + posted ≤ debits posted). A transfer that
would break a limit is refused, so the limits hold by construction, not by review.

Two-phase transfers reserve first and resolve later. A `pending` transfer holds its amount in
the pending balances; `post_pending` transfers naming it move parts of it to posted (unlike
TigerBeetle, several partial posts may draw one reservation down, so usage receipts can draw
on a job's reservation one by one); a `void_pending` releases the whole remainder and closes
it. A linked set of transfers (`create_transfers`) is written whole or not at all.

The chart of accounts lives here too, because `check_invariants` must know it:

=========================  =============  ===========================  ===============================
account                    ledger         limit                        moved by
=========================  =============  ===========================  ===============================
treasury:FY                cny            —                            funding the year's pool
pool:FY                    cny            debits ≤ credits             voucher parts, to earnings (or,
                                                                       held for a job, to pool_held)
pool_held:FY               cny            debits ≤ credits             held voucher money on its way
                                                                       from the pool to earnings
earnings:PROVIDER          cny            debits ≤ credits             credited by usage; payouts
receivable:ENTERPRISE      cny            credits ≤ debits             deferred parts; payments
bank                       cny            —                            payments in, payouts out
entitlements:FY            voucher_quota  —                            granting each company's cap
cap:FY:USCC                voucher_quota  debits ≤ credits             voucher parts used; holds
entitlements_used:FY       voucher_quota  —                            counterpart of cap use
credit_line:ENTERPRISE     credit         —                            setting the credit limit
credit:ENTERPRISE          credit         debits ≤ credits             holds, deferred parts,
                                                                       restored by payments
credit_used                credit         —                            counterpart of credit use
=========================  =============  ===========================  ===============================

Money (cny) and the two quotas live on separate ledgers, as TigerBeetle keeps assets apart:
a transfer never crosses ledgers. A company's cap and an enterprise's credit limit are quota
accounts that move in the same linked set as the money they limit.

A job's reservation (coordinator/vouchers.py) holds, as pending transfers named after the job,
its voucher share on its company's cap (cap → entitlements_used) and on the pool (pool →
pool_held: the provider, whose earnings it will credit, is not known yet), and the rest on
its enterprise's credit (credit → credit_used). A usage posting draws them down with partial
posts, the voucher money going on from pool_held to the provider's earnings in the same linked
set; settling the job voids what is left.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlite_utils

from coordinator.errors import ApiError
from shared.ledger_names import (  # the vocabulary the ledger writes, re-used by its callers
    BANK,
    CNY,
    CREDIT,
    CREDIT_LIMIT,
    CREDIT_USED,
    CREDITS_MUST_NOT_EXCEED_DEBITS,
    DEBITS_MUST_NOT_EXCEED_CREDITS,
    ENTITLEMENT,
    FLAGS,
    KINDS,
    LEDGERS,
    NO_LIMIT,
    PAYMENT,
    PAYMENT_CREDIT,
    PAYOUT,
    PENDING,
    POOL_FUNDING,
    POST_PENDING,
    POSTED,
    RESERVATION,
    RESERVATION_COVER,
    USAGE_CAP,
    USAGE_CREDIT,
    USAGE_DEFERRED,
    USAGE_POOL,
    USAGE_PREFIX,
    USAGE_VOUCHER,
    VOID_PENDING,
    VOUCHER_QUOTA,
    cap_account,
    credit_account,
    credit_line_account,
    earnings_account,
    entitlements_account,
    entitlements_used_account,
    pool_account,
    pool_held_account,
    receivable_account,
    treasury_account,
)

MAX_BALANCE = 2**63 - 1
MAX_CODE = 64
MAX_CAUSE = 300
MAX_PROBLEMS = 100

_ID_DOMAIN = b"suanli/ledger/transfer/v1\n"


# -- errors ----------------------------------------------------------------------------------


class LedgerError(ApiError):
    """The ledger refused an operation; nothing of it was written."""

    status = 409
    code = "ledger_refused"


class InvalidTransfer(LedgerError):
    """A transfer is malformed (amount, id, accounts, kind)."""

    status = 422
    code = "invalid_transfer"


class IdempotencyConflict(LedgerError):
    """An id is already taken by a record with other fields: a retry changed what it asks."""

    code = "idempotency_conflict"


class UnknownAccount(LedgerError):
    """A transfer names an account the ledger does not have."""

    status = 404
    code = "unknown_account"


class LimitExceeded(LedgerError):
    """A transfer would take an account past its balance limit."""

    code = "limit_exceeded"

    def __init__(self, detail: str, *, account: str, flag: str, transfer: Transfer) -> None:
        super().__init__(detail)
        self.account = account
        self.flag = flag
        self.transfer = transfer


class PendingError(LedgerError):
    """A post or void does not match an open pending transfer."""

    code = "bad_pending"


class LedgerOverflow(LedgerError):
    """A balance would pass the largest integer SQLite stores."""

    code = "ledger_overflow"


# -- records ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    id: str
    ledger: str
    kind: str
    owner: str | None
    flags: str
    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0

    @property
    def debit_headroom(self) -> int:
        """What may still be debited (pending or posted) without passing a debits ≤ credits limit."""
        return self.credits_posted - self.debits_posted - self.debits_pending

    @property
    def credit_headroom(self) -> int:
        """What may still be credited without passing a credits ≤ debits limit."""
        return self.debits_posted - self.credits_posted - self.credits_pending

    def over_limit(self) -> bool:
        if self.flags == DEBITS_MUST_NOT_EXCEED_CREDITS:
            return self.debit_headroom < 0
        if self.flags == CREDITS_MUST_NOT_EXCEED_DEBITS:
            return self.credit_headroom < 0
        return False


@dataclass(frozen=True)
class Transfer:
    id: bytes
    debit_account: str
    credit_account: str
    amount: int
    code: str
    cause: str
    kind: str = POSTED
    pending_id: bytes | None = None
    receipt_digest: bytes | None = None
    at_ms: int = 0

    def differences(self, other: Transfer) -> list[str]:
        """The fields (all but the time) in which `other` differs; a retry differs in none."""
        names = (
            "debit_account",
            "credit_account",
            "amount",
            "code",
            "cause",
            "kind",
            "pending_id",
            "receipt_digest",
        )
        return [name for name in names if getattr(self, name) != getattr(other, name)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id.hex(),
            "kind": self.kind,
            "debit_account": self.debit_account,
            "credit_account": self.credit_account,
            "amount": self.amount,
            "code": self.code,
            "cause": self.cause,
            "pending_id": self.pending_id.hex() if self.pending_id is not None else None,
            "receipt_digest": self.receipt_digest.hex()
            if self.receipt_digest is not None
            else None,
            "at_ms": self.at_ms,
        }


def transfer_id(cause: str, leg: str) -> bytes:
    """The id of one leg of what `cause` moves: SHA-256, so the same cause always names the same transfer."""
    return hashlib.sha256(_ID_DOMAIN + cause.encode() + b"\n" + leg.encode()).digest()


@contextmanager
def savepoint(db: sqlite_utils.Database, name: str = "ledger") -> Iterator[None]:
    """All or nothing inside whatever transaction the caller (or the writer thread) holds."""
    conn = db.conn
    conn.execute(f"SAVEPOINT {name}")
    try:
        yield
    except BaseException:
        conn.execute(f"ROLLBACK TO {name}")
        conn.execute(f"RELEASE {name}")
        raise
    conn.execute(f"RELEASE {name}")


# -- accounts --------------------------------------------------------------------------------

_ACCOUNT_COLUMNS = (
    "id, ledger, kind, owner, flags, debits_pending, debits_posted, credits_pending, credits_posted"
)


def _account_from_row(row: Sequence[Any]) -> Account:
    return Account(*row)


def get_account(db: sqlite_utils.Database, account_id: str) -> Account | None:
    row = db.conn.execute(
        f"SELECT {_ACCOUNT_COLUMNS} FROM ledger_accounts WHERE id = ?", [account_id]
    ).fetchone()
    return _account_from_row(row) if row is not None else None


def rows_in(db: sqlite_utils.Database, query: str, values: Sequence[Any]) -> list[Any]:
    """The rows of `query` (ending in `IN`) for each of `values`, asked 500 at a time."""
    rows: list[Any] = []
    for at in range(0, len(values), 500):
        chunk = list(values[at : at + 500])
        rows += db.conn.execute(f"{query} ({','.join('?' * len(chunk))})", chunk).fetchall()
    return rows


def get_accounts(db: sqlite_utils.Database, account_ids: Sequence[str]) -> dict[str, Account]:
    rows = rows_in(db, f"SELECT {_ACCOUNT_COLUMNS} FROM ledger_accounts WHERE id IN", account_ids)
    return {row[0]: _account_from_row(row) for row in rows}


def open_account(
    db: sqlite_utils.Database,
    account_id: str,
    *,
    ledger: str,
    kind: str,
    owner: str | None = None,
    flags: str = NO_LIMIT,
    now_ms: int,
) -> Account:
    """Create the account, or return it if it exists with the same ledger, kind, owner and flags."""
    if ledger not in LEDGERS:
        raise InvalidTransfer(
            f"there is no ledger {ledger!r}; the ledgers are {', '.join(LEDGERS)}"
        )
    if flags not in FLAGS:
        raise InvalidTransfer(f"{flags!r} is not a balance limit")
    db.conn.execute(
        "INSERT OR IGNORE INTO ledger_accounts (id, ledger, kind, owner, flags, created_at_ms) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [account_id, ledger, kind, owner, flags, now_ms],
    )
    account = get_account(db, account_id)
    assert account is not None
    if (account.ledger, account.kind, account.owner, account.flags) != (ledger, kind, owner, flags):
        raise IdempotencyConflict(
            f"account {account_id} already exists as a {account.kind} account on ledger "
            f"{account.ledger} (owner {account.owner}, limit {account.flags or 'none'})"
        )
    return account


# -- transfers -------------------------------------------------------------------------------

_TRANSFER_COLUMNS = (
    "id, debit_account, credit_account, amount, code, cause, kind, pending_id, "
    "receipt_digest, at_ms"
)


def _transfer_from_row(row: Sequence[Any]) -> Transfer:
    return Transfer(*row)


def get_transfers(db: sqlite_utils.Database, ids: Sequence[bytes]) -> dict[bytes, Transfer]:
    if not ids:
        return {}
    marks = ",".join("?" * len(ids))
    rows = db.conn.execute(
        f"SELECT {_TRANSFER_COLUMNS} FROM ledger_transfers WHERE id IN ({marks})", list(ids)
    )
    return {row[0]: _transfer_from_row(row) for row in rows}


def transfers_for_receipt(db: sqlite_utils.Database, digest: bytes) -> list[Transfer]:
    rows = db.conn.execute(
        f"SELECT {_TRANSFER_COLUMNS} FROM ledger_transfers WHERE receipt_digest = ? ORDER BY seq",
        [digest],
    )
    return [_transfer_from_row(row) for row in rows]


def _is_amount(value: object) -> bool:
    return type(value) is int and 0 < value <= MAX_BALANCE


def _validate(t: Transfer) -> None:
    if type(t.id) is not bytes or len(t.id) != 32:
        raise InvalidTransfer("a transfer id is 32 bytes (see transfer_id)")
    if t.kind not in KINDS:
        raise InvalidTransfer(
            f"{t.kind!r} is not a transfer kind; the kinds are {', '.join(KINDS)}"
        )
    if not _is_amount(t.amount):
        raise InvalidTransfer(
            f"a transfer moves a positive integer number of micro-yuan up to {MAX_BALANCE}, "
            f"not {t.amount!r}"
        )
    for name in ("debit_account", "credit_account", "code", "cause"):
        value = getattr(t, name)
        if type(value) is not str or not value:
            raise InvalidTransfer(f"a transfer's {name} must be non-empty text")
    if t.debit_account == t.credit_account:
        raise InvalidTransfer(
            f"transfer {t.code} debits and credits the same account {t.debit_account}"
        )
    if len(t.code) > MAX_CODE or len(t.cause) > MAX_CAUSE:
        raise InvalidTransfer(
            f"a code is at most {MAX_CODE} and a cause at most {MAX_CAUSE} characters"
        )
    resolves = t.kind in (POST_PENDING, VOID_PENDING)
    if resolves != (t.pending_id is not None):
        raise InvalidTransfer("a post or void names its pending transfer, and only those do")
    if t.pending_id is not None and (type(t.pending_id) is not bytes or len(t.pending_id) != 32):
        raise InvalidTransfer("a pending id is 32 bytes")
    if t.code.startswith(USAGE_PREFIX) != (t.receipt_digest is not None):
        raise InvalidTransfer(
            f"a {USAGE_PREFIX}* transfer names its receipt digest, and only those do"
        )
    if t.receipt_digest is not None and (
        type(t.receipt_digest) is not bytes or not 0 < len(t.receipt_digest) <= 64
    ):
        raise InvalidTransfer("a receipt digest is 1 to 64 bytes")
    if type(t.at_ms) is not int:
        raise InvalidTransfer("a transfer's time is integer milliseconds")


@dataclass
class _Working:
    """An account's balances while a linked set is applied in memory."""

    account: Account
    balances: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        a = self.account
        self.balances = [a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted]


@dataclass
class _Open:
    debit_account: str
    credit_account: str
    amount: int
    resolved: int
    voided: bool


def _load_pendings(db: sqlite_utils.Database, pending_ids: Sequence[bytes]) -> dict[bytes, _Open]:
    rows = rows_in(
        db,
        "SELECT p.id, p.kind, p.debit_account, p.credit_account, p.amount, "
        "(SELECT COALESCE(SUM(r.amount), 0) FROM ledger_transfers r WHERE r.pending_id = p.id), "
        "EXISTS (SELECT 1 FROM ledger_transfers r WHERE r.pending_id = p.id "
        "        AND r.kind = 'void_pending') "
        "FROM ledger_transfers p WHERE p.id IN",
        pending_ids,
    )
    return {
        row[0]: _Open(row[2], row[3], row[4], row[5], bool(row[6]))
        for row in rows
        if row[1] == PENDING
    }


def _load_pending(db: sqlite_utils.Database, pending_id: bytes) -> _Open | None:
    return _load_pendings(db, [pending_id]).get(pending_id)


def pending_remaining(db: sqlite_utils.Database, pending_id: bytes) -> int:
    """What is still held by a pending transfer (0 once drawn down or voided, or if unknown)."""
    found = _load_pending(db, pending_id)
    return 0 if found is None else found.amount - found.resolved


@dataclass(frozen=True)
class Hold:
    """A pending transfer as it stands: what it holds on which accounts, and what is left."""

    id: bytes
    debit_account: str
    credit_account: str
    amount: int
    remaining: int


def holds(db: sqlite_utils.Database, pending_ids: Sequence[bytes]) -> dict[bytes, Hold]:
    """The pending transfers among these ids (those that exist), each with what it still holds."""
    return {
        pending_id: Hold(
            pending_id, o.debit_account, o.credit_account, o.amount, o.amount - o.resolved
        )
        for pending_id, o in _load_pendings(db, list(pending_ids)).items()
    }


def create_transfers(db: sqlite_utils.Database, transfers: Sequence[Transfer]) -> list[Transfer]:
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
        _validate(t)
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

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db
        self._working: dict[str, _Working] = {}
        self._opens: dict[bytes, _Open] = {}
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
        self._opens.update(_load_pendings(self.db, missing))
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

    def _open(self, pending_id: bytes) -> _Open | None:
        if pending_id not in self._opens:
            if pending_id in self._absent:
                return None
            found = _load_pending(self.db, pending_id)
            if found is None:
                return None
            self._opens[pending_id] = found
        return self._opens[pending_id]

    def add(self, transfers: Sequence[Transfer]) -> None:
        for t in transfers:
            _validate(t)
        working = self._load([a for t in transfers for a in (t.debit_account, t.credit_account)])
        touched = {a for t in transfers for a in (t.debit_account, t.credit_account)}
        saved = {a: working[a].balances.copy() for a in touched if a in working}
        resolved = {t.pending_id for t in transfers if t.pending_id is not None}
        saved_opens = {
            p: _Open(o.debit_account, o.credit_account, o.amount, o.resolved, o.voided)
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
            self._opens[t.id] = _Open(t.debit_account, t.credit_account, amount, 0, False)
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
                f"({d_pending + d_posted} µ¥ pending and posted) exceed its credits ({c_posted} µ¥)",
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
                f"INSERT INTO ledger_transfers ({_TRANSFER_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
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


# -- invariants ------------------------------------------------------------------------------


def _hex(value: bytes | None) -> str:
    return value.hex()[:16] if value is not None else "none"


def check_invariants(db: sqlite_utils.Database) -> list[str]:
    """Every way the ledger could be wrong, one sentence each; an empty list when all hold.

    Recomputes every account's balances from its transfers, checks that each ledger's debits
    equal its credits (posted and pending), that no limited account is past its limit, that
    every post or void matches its pending transfer, that every usage transfer names an
    accepted receipt and agrees with its posting, and that the quota accounts agree with the
    money they limit. Used by the tests, `suanli-coordinator admin check-ledger` and auditors.
    """
    problems: list[str] = []
    try:
        _check(db.conn, problems)
    except sqlite3.OperationalError as exc:  # e.g. "integer overflow" in SUM over tampered rows
        problems.append(f"the ledger cannot be summed: {exc}")
    if len(problems) > MAX_PROBLEMS:
        problems = problems[:MAX_PROBLEMS] + [f"… and {len(problems) - MAX_PROBLEMS} more problems"]
    return problems


def _check(conn: sqlite3.Connection, problems: list[str]) -> None:
    stored: dict[str, Account] = {
        row[0]: _account_from_row(row)
        for row in conn.execute(f"SELECT {_ACCOUNT_COLUMNS} FROM ledger_accounts")
    }

    # one pass over the transfers: balances recomputed per account, as
    # [debits_pending, debits_posted, credits_pending, credits_posted], and every pair of
    # accounts that money moved between (for the ledger check)
    computed: dict[str, list[int]] = {}
    for debit, credit, kind, total in conn.execute(
        "SELECT debit_account, credit_account, kind, SUM(amount) FROM ledger_transfers "
        "GROUP BY debit_account, credit_account, kind"
    ):
        d = computed.setdefault(debit, [0, 0, 0, 0])
        c = computed.setdefault(credit, [0, 0, 0, 0])
        if kind == PENDING:
            d[0] += total
            c[2] += total
        elif kind == POSTED:
            d[1] += total
            c[3] += total
        elif kind == POST_PENDING:
            d[0] -= total
            d[1] += total
            c[2] -= total
            c[3] += total
        elif kind == VOID_PENDING:
            d[0] -= total
            c[2] -= total
        else:
            problems.append(f"transfers of unknown kind {kind!r} move {debit} → {credit}")
        if debit in stored and credit in stored and stored[debit].ledger != stored[credit].ledger:
            problems.append(
                f"transfers from {debit} to {credit} cross ledgers "
                f"({stored[debit].ledger} → {stored[credit].ledger})"
            )
    for account_id in sorted(set(computed) - set(stored)):
        problems.append(f"transfers name account {account_id}, which does not exist")
    names = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")
    for account_id, account in stored.items():
        sums = computed.get(account_id, [0, 0, 0, 0])
        for name, expected in zip(names, sums, strict=True):
            if getattr(account, name) != expected:
                problems.append(
                    f"account {account_id} stores {name} = {getattr(account, name)} µ¥ "
                    f"but its transfers sum to {expected} µ¥"
                )
            if expected < 0:
                problems.append(
                    f"account {account_id} has negative {name} ({expected} µ¥) from its transfers"
                )
        if account.over_limit():
            problems.append(
                f"account {account_id} is past its limit {account.flags}: debits "
                f"{account.debits_posted} posted + {account.debits_pending} pending, "
                f"credits {account.credits_posted} posted + {account.credits_pending} "
                f"pending"
            )
    for ledger in LEDGERS:
        accounts = [a for a in stored.values() if a.ledger == ledger]
        for debits, credits, what in (
            ("debits_posted", "credits_posted", "posted"),
            ("debits_pending", "credits_pending", "pending"),
        ):
            d_total = sum(getattr(a, debits) for a in accounts)
            c_total = sum(getattr(a, credits) for a in accounts)
            if d_total != c_total:
                problems.append(
                    f"ledger {ledger}: {what} debits ({d_total} µ¥) do not equal {what} "
                    f"credits ({c_total} µ¥)"
                )

    for seq, pending_id in conn.execute(
        "SELECT r.seq, r.pending_id FROM ledger_transfers r "
        "LEFT JOIN ledger_transfers p ON p.id = r.pending_id "
        "WHERE r.pending_id IS NOT NULL AND (p.id IS NULL OR p.kind <> 'pending' "
        "OR p.debit_account <> r.debit_account OR p.credit_account <> r.credit_account "
        "OR r.seq < p.seq)"
    ):
        problems.append(
            f"transfer #{seq} resolves {_hex(pending_id)}, which is not an earlier "
            f"pending transfer of the same accounts"
        )
    for pending_id, amount, resolved, voids, last_void, last in conn.execute(
        "SELECT r.pending_id, p.amount, SUM(r.amount), SUM(r.kind = 'void_pending'), "
        "MAX(CASE WHEN r.kind = 'void_pending' THEN r.seq END), MAX(r.seq) "
        "FROM ledger_transfers r JOIN ledger_transfers p ON p.id = r.pending_id "
        "WHERE r.pending_id IS NOT NULL GROUP BY r.pending_id"
    ):
        if resolved > amount:
            problems.append(
                f"pending transfer {_hex(pending_id)} of {amount} µ¥ was resolved for {resolved} µ¥"
            )
        if voids > 1 or (voids == 1 and last_void != last):
            problems.append(f"pending transfer {_hex(pending_id)} was resolved after it was voided")

    for seq, code in conn.execute(
        "SELECT seq, code FROM ledger_transfers "
        "WHERE (receipt_digest IS NULL) = (code LIKE 'usage\\_%' ESCAPE '\\')"
    ):
        problems.append(
            f"transfer #{seq} ({code}) names a receipt digest if and only if it is not "
            f"a usage transfer"
        )
    for digest, seq, accepted, posted in conn.execute(
        "SELECT t.receipt_digest, MIN(t.seq), "
        "EXISTS (SELECT 1 FROM receipts r WHERE r.digest = t.receipt_digest), "
        "EXISTS (SELECT 1 FROM ledger_postings p WHERE p.receipt_digest = t.receipt_digest) "
        "FROM ledger_transfers t WHERE t.receipt_digest IS NOT NULL GROUP BY t.receipt_digest "
        "HAVING NOT EXISTS (SELECT 1 FROM receipts r WHERE r.digest = t.receipt_digest) "
        "OR NOT EXISTS (SELECT 1 FROM ledger_postings p WHERE p.receipt_digest = t.receipt_digest)"
    ):
        if not accepted:
            problems.append(
                f"usage transfer #{seq} names receipt {_hex(digest)}, which is not an "
                f"accepted receipt"
            )
        if not posted:
            problems.append(
                f"usage transfer #{seq} names receipt {_hex(digest)}, which has no posting"
            )
    _check_postings(conn, problems)
    _check_quotas(conn, stored, problems)
    _check_reservations(conn, problems)


# the transfers a posting may consist of, as an SQL test of one transfer `t` of posting `p`.
# Voucher money goes from the pool to the provider's earnings directly, or (when the job's
# reservation held it) through pool_held, whose usage_pool legs must then bring in exactly
# what its usage_voucher legs pay out.
_POOL = "'pool:' || p.fiscal_year"
_POOL_HELD = "'pool_held:' || p.fiscal_year"
_EARNINGS = "'earnings:' || p.provider_id"
_DRAWS = "t.kind IN ('posted', 'post_pending')"
_LEG_OK = (
    f"CASE t.code "
    f"WHEN '{USAGE_VOUCHER}' THEN t.kind = 'posted' AND t.credit_account = {_EARNINGS} AND "
    f"(t.debit_account = {_POOL} OR t.debit_account = {_POOL_HELD}) "
    f"WHEN '{USAGE_POOL}' THEN {_DRAWS} AND t.debit_account = {_POOL} AND "
    f"t.credit_account = {_POOL_HELD} "
    f"WHEN '{USAGE_CAP}' THEN {_DRAWS} AND "
    f"t.debit_account = 'cap:' || p.fiscal_year || ':' || p.enterprise_uscc AND "
    f"t.credit_account = 'entitlements_used:' || p.fiscal_year "
    f"WHEN '{USAGE_DEFERRED}' THEN {_DRAWS} AND t.debit_account = 'receivable:' || p.enterprise_id "
    f"AND t.credit_account = {_EARNINGS} "
    f"WHEN '{USAGE_CREDIT}' THEN {_DRAWS} AND t.debit_account = 'credit:' || p.enterprise_id AND "
    f"t.credit_account = '{CREDIT_USED}' "
    f"ELSE 0 END"
)


def _code_sum(code: str) -> str:
    return f"SUM(CASE t.code WHEN '{code}' THEN t.amount ELSE 0 END)"


def _check_postings(conn: sqlite3.Connection, problems: list[str]) -> None:
    """Each posting's transfers are exactly its legs, summing to its voucher and deferred parts.

    The whole table is checked in SQL (every leg of the right shape, the sums right); only
    postings found wrong are read back to say how.
    """
    paid_from_held = (
        f"SUM(CASE WHEN t.code = '{USAGE_VOUCHER}' AND t.debit_account = "
        f"{_POOL_HELD} THEN t.amount ELSE 0 END)"
    )
    bad = conn.execute(
        f"SELECT p.receipt_digest FROM ledger_postings p "
        f"LEFT JOIN ledger_transfers t ON t.receipt_digest = p.receipt_digest "
        f"GROUP BY p.receipt_digest HAVING "
        f"SUM(CASE WHEN t.seq IS NOT NULL AND NOT COALESCE(({_LEG_OK}), 0) THEN 1 ELSE 0 END) > 0 "
        f"OR {_code_sum(USAGE_VOUCHER)} <> p.voucher OR {_code_sum(USAGE_CAP)} <> p.voucher "
        f"OR {_code_sum(USAGE_DEFERRED)} <> p.deferred OR {_code_sum(USAGE_CREDIT)} <> p.deferred "
        f"OR {_code_sum(USAGE_POOL)} <> {paid_from_held} "
        f"OR NOT EXISTS (SELECT 1 FROM receipts r WHERE r.digest = p.receipt_digest)"
    ).fetchall()
    for (digest,) in bad[: MAX_PROBLEMS + 1]:
        enterprise_id, provider_id, year, uscc, voucher, deferred, accepted = conn.execute(
            "SELECT enterprise_id, provider_id, fiscal_year, enterprise_uscc, voucher, deferred, "
            "EXISTS (SELECT 1 FROM receipts r WHERE r.digest = receipt_digest) "
            "FROM ledger_postings WHERE receipt_digest = ?",
            [digest],
        ).fetchone()
        if not accepted:
            problems.append(f"posting {_hex(digest)} names no accepted receipt")
        earnings = earnings_account(provider_id)
        want = {
            USAGE_VOUCHER: {(pool_account(year), earnings), (pool_held_account(year), earnings)},
            USAGE_POOL: {(pool_account(year), pool_held_account(year))},
            USAGE_CAP: {(cap_account(year, uscc), entitlements_used_account(year))},
            USAGE_DEFERRED: {(receivable_account(enterprise_id), earnings)},
            USAGE_CREDIT: {(credit_account(enterprise_id), CREDIT_USED)},
        }
        legs: dict[str, int] = {}
        held = 0
        for code, debit, credit, kind, amount in conn.execute(
            "SELECT code, debit_account, credit_account, kind, amount FROM ledger_transfers "
            "WHERE receipt_digest = ? ORDER BY seq",
            [digest],
        ):
            kinds = (POSTED,) if code == USAGE_VOUCHER else (POSTED, POST_PENDING)
            if (debit, credit) not in want.get(code, set()) or kind not in kinds:
                problems.append(
                    f"posting {_hex(digest)} has a stray transfer {code} ({kind}) of "
                    f"{amount} µ¥ from {debit} to {credit}"
                )
                continue
            legs[code] = legs.get(code, 0) + amount
            if code == USAGE_VOUCHER and debit == pool_held_account(year):
                held += amount
        got = [
            legs.get(code, 0) for code in (USAGE_VOUCHER, USAGE_CAP, USAGE_DEFERRED, USAGE_CREDIT)
        ]
        if got != [voucher, voucher, deferred, deferred]:
            problems.append(
                f"posting {_hex(digest)} says voucher {voucher} µ¥ and deferred {deferred} µ¥ but "
                f"its transfers move voucher {got[0]}, cap {got[1]}, deferred {got[2]} and "
                f"credit {got[3]} µ¥"
            )
        if legs.get(USAGE_POOL, 0) != held:
            problems.append(
                f"posting {_hex(digest)} pays {held} µ¥ of vouchers out of "
                f"{pool_held_account(year)} but draws {legs.get(USAGE_POOL, 0)} µ¥ "
                f"into it from the pool"
            )


def _check_quotas(
    conn: sqlite3.Connection, stored: dict[str, Account], problems: list[str]
) -> None:
    for account in stored.values():
        if account.kind == "pool":
            year = int(account.id.split(":", 1)[1])
            used = stored.get(entitlements_used_account(year))
            used_total = used.credits_posted if used is not None else 0
            if account.debits_posted != used_total:
                problems.append(
                    f"{account.id} paid out {account.debits_posted} µ¥ of vouchers but "
                    f"the caps of {year} record {used_total} µ¥ used"
                )
            # every job's voucher hold is on its company's cap and on the pool alike
            cap_held = used.credits_pending if used is not None else 0
            if account.debits_pending != cap_held:
                problems.append(
                    f"{account.id} holds {account.debits_pending} µ¥ for jobs but the "
                    f"caps of {year} hold {cap_held} µ¥"
                )
            held = stored.get(pool_held_account(year))
            if held is not None and (
                held.debits_posted != held.credits_posted
                or held.credits_pending != account.debits_pending
            ):
                problems.append(
                    f"{held.id} took in {held.credits_posted} µ¥ and paid "
                    f"{held.debits_posted} µ¥ to providers, and is promised "
                    f"{held.credits_pending} µ¥ while the pool holds "
                    f"{account.debits_pending} µ¥"
                )
        elif account.kind == "credit":
            enterprise_id = account.id.split(":", 1)[1]
            line = stored.get(credit_line_account(enterprise_id))
            receivable = stored.get(receivable_account(enterprise_id))
            limit = (line.debits_posted - line.credits_posted) if line is not None else 0
            owed = (receivable.debits_posted - receivable.credits_posted) if receivable else 0
            free = account.credits_posted - account.debits_posted
            if free != limit - owed:
                problems.append(
                    f"{account.id} has {free} µ¥ of credit unused but its limit "
                    f"{limit} µ¥ less the {owed} µ¥ owed is {limit - owed} µ¥"
                )


def _check_reservations(conn: sqlite3.Connection, problems: list[str]) -> None:
    """Every job whose reservation is not settled still holds what it may yet be charged.

    A job's holds are its pending transfers caused by `job:ID` on the credit ledger and on the
    pool (its cap hold mirrors the pool's, see `_check_quotas`); what they still hold must be
    at least its maximum cost less what its postings charged, so usage within the maximum can
    always be paid. A job is settled once one of its holds was voided by code `reservation`.
    """
    held = dict(
        conn.execute(
            "SELECT h.cause, SUM(h.amount - COALESCE((SELECT SUM(d.amount) FROM ledger_transfers d "
            "WHERE d.pending_id = h.id), 0)) FROM ledger_transfers h "
            "WHERE h.kind = 'pending' AND h.cause LIKE 'job:%' "
            "AND (h.debit_account LIKE 'credit:%' OR h.debit_account LIKE 'pool:%') GROUP BY h.cause"
        )
    )
    settled = {
        row[0]
        for row in conn.execute(
            "SELECT DISTINCT cause FROM ledger_transfers WHERE pending_id IS NOT NULL "
            f"AND kind = 'void_pending' AND code = '{RESERVATION}'"
        )
    }
    for job_id, max_cost, charged in conn.execute(
        "SELECT r.job_id, r.max_cost, (SELECT COALESCE(SUM(p.amount), 0) FROM ledger_postings p "
        "WHERE p.job_id = r.job_id) FROM ledger_reservations r"
    ):
        cause = f"job:{job_id}"
        if cause in settled:
            continue
        still = max_cost - charged
        if held.get(cause, 0) < still:
            problems.append(
                f"job {job_id} may still be charged {still} µ¥ of its maximum "
                f"{max_cost} µ¥ but its reservation holds only {held.get(cause, 0)} µ¥"
            )
