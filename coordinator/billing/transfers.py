"""Reading transfers back, and the rules every transfer must meet before it is applied.

Transfers are only ever inserted; the schema's triggers refuse UPDATE and DELETE, so a mistake
is corrected by a new transfer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from coordinator.billing.errors import InvalidTransfer
from coordinator.billing.records import MAX_BALANCE, MAX_CAUSE, MAX_CODE, Transfer
from coordinator.storage import Session
from shared.ledger_names import KINDS, POST_PENDING, USAGE_PREFIX, VOID_PENDING

TRANSFER_COLUMNS = (
    "id, debit_account, credit_account, amount, code, cause, kind, pending_id, "
    "receipt_digest, at_ms"
)


def _transfer_from_row(row: Sequence[Any]) -> Transfer:
    return Transfer(*row)


def get_transfers(db: Session, ids: Sequence[bytes]) -> dict[bytes, Transfer]:
    if not ids:
        return {}
    marks = ",".join("?" * len(ids))
    rows = db.conn.execute(
        f"SELECT {TRANSFER_COLUMNS} FROM ledger_transfers WHERE id IN ({marks})", list(ids)
    )
    return {row[0]: _transfer_from_row(row) for row in rows}


def transfers_for_receipt(db: Session, digest: bytes) -> list[Transfer]:
    rows = db.conn.execute(
        f"SELECT {TRANSFER_COLUMNS} FROM ledger_transfers WHERE receipt_digest = ? ORDER BY seq",
        [digest],
    )
    return [_transfer_from_row(row) for row in rows]


def _is_amount(value: object) -> bool:
    return type(value) is int and 0 < value <= MAX_BALANCE


def validate_transfer(t: Transfer) -> None:
    """Refuse (`InvalidTransfer`) a transfer that is malformed in itself, whatever the balances."""
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
