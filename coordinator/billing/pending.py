"""Pending transfers as they stand: what each still holds, read in a few queries.

Two-phase transfers reserve first and resolve later. A `pending` transfer holds its amount in
the pending balances; `post_pending` transfers naming it move parts of it to posted (unlike
TigerBeetle, several partial posts may draw one reservation down, so usage receipts can draw
on a job's reservation one by one); a `void_pending` releases the whole remainder and closes
it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from coordinator.billing.sql import rows_in
from coordinator.storage import Session
from shared.ledger_names import PENDING, VOID_PENDING


@dataclass
class OpenPending:
    """A pending transfer while linked sets resolve it: what it held, and how much is resolved."""

    debit_account: str
    credit_account: str
    amount: int
    resolved: int
    voided: bool


def load_pendings(db: Session, pending_ids: Sequence[bytes]) -> dict[bytes, OpenPending]:
    """The pending transfers among these ids, with what their posts and voids resolved."""
    rows = rows_in(
        db,
        "SELECT p.id, p.kind, p.debit_account, p.credit_account, p.amount, "
        "(SELECT COALESCE(SUM(r.amount), 0) FROM ledger_transfers r WHERE r.pending_id = p.id), "
        "EXISTS (SELECT 1 FROM ledger_transfers r WHERE r.pending_id = p.id "
        f"        AND r.kind = '{VOID_PENDING}') "
        "FROM ledger_transfers p WHERE p.id IN",
        pending_ids,
    )
    return {
        row[0]: OpenPending(row[2], row[3], row[4], row[5], bool(row[6]))
        for row in rows
        if row[1] == PENDING
    }


def load_pending(db: Session, pending_id: bytes) -> OpenPending | None:
    return load_pendings(db, [pending_id]).get(pending_id)


def pending_remaining(db: Session, pending_id: bytes) -> int:
    """What is still held by a pending transfer (0 once drawn down or voided, or if unknown)."""
    found = load_pending(db, pending_id)
    return 0 if found is None else found.amount - found.resolved


@dataclass(frozen=True)
class Hold:
    """A pending transfer as it stands: what it holds on which accounts, and what is left."""

    id: bytes
    debit_account: str
    credit_account: str
    amount: int
    remaining: int


def holds(db: Session, pending_ids: Sequence[bytes]) -> dict[bytes, Hold]:
    """The pending transfers among these ids (those that exist), each with what it still holds."""
    return {
        pending_id: Hold(
            pending_id, o.debit_account, o.credit_account, o.amount, o.amount - o.resolved
        )
        for pending_id, o in load_pendings(db, list(pending_ids)).items()
    }
