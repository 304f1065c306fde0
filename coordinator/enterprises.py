"""Enterprises as billing sees them: their USCC (cached, it never changes) and their account."""

from __future__ import annotations

from typing import Any

from coordinator import billing
from coordinator.storage import Session


class Enterprises:
    def __init__(self, policy: billing.VoucherPolicy) -> None:
        self.policy = policy
        self._usccs: dict[str, str] = {}

    def uscc(self, db: Session, enterprise_id: str) -> str:
        uscc = self._usccs.get(enterprise_id)
        if uscc is None:
            row = db.conn.execute(
                "SELECT uscc FROM enterprises WHERE id = ?", [enterprise_id]
            ).fetchone()
            uscc = self._usccs[enterprise_id] = str(row[0])
        return uscc

    def account(self, db: Session, enterprise_id: str, now: int) -> dict[str, Any]:
        """The enterprise's credit, vouchers and usage, its accounts opened on first sight."""
        billing.open_enterprise_accounts(
            db, enterprise_id, self.uscc(db, enterprise_id), self.policy, now
        )
        return billing.enterprise_account(db, enterprise_id, self.policy, now)
