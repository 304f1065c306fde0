"""The ledger's two records: accounts and immutable transfers in integer micro-yuan, after
TigerBeetle.

A transfer debits one account and credits another by a positive amount, names a code (what
kind of movement) and a cause (what made it: a receipt digest, a payment reference, a job),
and has an id derived from that cause and its leg (`transfer_id`), so a retry is a no-op that
returns the first result and a retry with other fields is refused.

Each account keeps its four balances (debits/credits, pending/posted) and may carry one
balance limit: `debits_must_not_exceed_credits` (debits pending + posted ≤ credits posted) or
`credits_must_not_exceed_debits` (credits pending + posted ≤ debits posted).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from shared.ledger_names import (
    CREDITS_MUST_NOT_EXCEED_DEBITS,
    DEBITS_MUST_NOT_EXCEED_CREDITS,
    POSTED,
)

MAX_BALANCE = 2**63 - 1
MAX_CODE = 64
MAX_CAUSE = 300

_ID_DOMAIN = b"suanli/ledger/transfer/v1\n"


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
        """What may still be debited (pending or posted) without passing a debits ≤ credits
        limit."""
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
    """The id of one leg of what `cause` moves: SHA-256, so the same cause always names the
    same transfer."""
    return hashlib.sha256(_ID_DOMAIN + cause.encode() + b"\n" + leg.encode()).digest()


def short_hex(value: bytes | None) -> str:
    """An id or digest as sentences name it: its first 16 hex digits."""
    return value.hex()[:16] if value is not None else "none"
