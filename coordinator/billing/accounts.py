"""Ledger accounts: reading them, and opening one (idempotently) on its ledger with its limit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from coordinator.billing.errors import IdempotencyConflict, InvalidTransfer
from coordinator.billing.records import Account
from coordinator.billing.sql import rows_in
from coordinator.storage import Session
from shared.ledger_names import FLAGS, LEDGERS, NO_LIMIT

ACCOUNT_COLUMNS = (
    "id, ledger, kind, owner, flags, debits_pending, debits_posted, credits_pending, credits_posted"
)


def account_from_row(row: Sequence[Any]) -> Account:
    return Account(*row)


def get_account(db: Session, account_id: str) -> Account | None:
    row = db.conn.execute(
        f"SELECT {ACCOUNT_COLUMNS} FROM ledger_accounts WHERE id = ?", [account_id]
    ).fetchone()
    return account_from_row(row) if row is not None else None


def get_accounts(db: Session, account_ids: Sequence[str]) -> dict[str, Account]:
    rows = rows_in(db, f"SELECT {ACCOUNT_COLUMNS} FROM ledger_accounts WHERE id IN", account_ids)
    return {row[0]: account_from_row(row) for row in rows}


def open_account(
    db: Session,
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
        "INSERT INTO ledger_accounts (id, ledger, kind, owner, flags, created_at_ms) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
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
