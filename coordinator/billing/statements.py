"""Closing a month and the statements it issues: each enterprise's usage with its amount due,
due date and suspension date, and each provider's earnings; and, from them, whether an
enterprise is suspended for a statement unpaid past its grace."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from coordinator.billing.accounts import get_account
from coordinator.billing.amounts import yuan
from coordinator.billing.errors import PeriodNotEnded
from coordinator.billing.periods import DAY_MS, date_text, is_closed, period_bounds, utc
from coordinator.billing.policy import VoucherPolicy
from coordinator.billing.sql import savepoint
from coordinator.storage import Session
from shared.ledger_names import receivable_account

# the two kinds of party a statement is issued to
ENTERPRISE = "enterprise"
PROVIDER = "provider"


@dataclass(frozen=True)
class Statement:
    period: str
    party_kind: str
    party_id: str
    total: int
    voucher: int
    deferred: int
    lines: tuple[dict[str, Any], ...]
    issued_at_ms: int
    due_at_ms: int | None
    suspend_after_ms: int | None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "period": self.period,
            "party_kind": self.party_kind,
            "party_id": self.party_id,
            "total_micro_yuan": self.total,
            "voucher_micro_yuan": self.voucher,
            "deferred_micro_yuan": self.deferred,
            "lines": list(self.lines),
            "issued_at_ms": self.issued_at_ms,
        }
        if self.party_kind == ENTERPRISE:
            out["amount_due_micro_yuan"] = self.deferred
            out["due_at_ms"] = self.due_at_ms
            out["due_date"] = date_text(self.due_at_ms) if self.due_at_ms is not None else None
            out["suspend_after_ms"] = self.suspend_after_ms
        return out


@dataclass(frozen=True)
class PeriodClose:
    period: str
    closed_at_ms: int
    statements: tuple[Statement, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "closed_at_ms": self.closed_at_ms,
            "statements": [s.to_dict() for s in self.statements],
        }


_STATEMENT_COLUMNS = (
    "period, party_kind, party_id, total, voucher, deferred, lines, issued_at_ms, "
    "due_at_ms, suspend_after_ms"
)


def _statement(row: Any) -> Statement:
    lines = tuple(json.loads(row[6]))
    return Statement(row[0], row[1], row[2], row[3], row[4], row[5], lines, row[7], row[8], row[9])


def statements_of(db: Session, party_kind: str, party_id: str) -> list[Statement]:
    """The party's statements, oldest first."""
    return _statements(db, "party_kind = ? AND party_id = ?", [party_kind, party_id])


def _statements(db: Session, where: str, args: list[Any]) -> list[Statement]:
    rows = db.conn.execute(
        f"SELECT {_STATEMENT_COLUMNS} FROM ledger_statements WHERE {where} "
        f"ORDER BY period, party_kind, party_id",
        args,
    )
    return [_statement(row) for row in rows]


def close_period(
    db: Session, period: str, policy: VoucherPolicy, now_ms: int, early: bool = False
) -> PeriodClose:
    """Close a month: no more usage is posted into it, and statements are issued.

    Each enterprise with usage in the period gets a statement (usage by job, voucher part,
    deferred amount due, due date = the period's end + payment_terms_days, suspension after
    grace_days more); each provider gets an earnings statement. Idempotent: closing again
    returns the first close. Refused (`PeriodNotEnded`) before the period has ended, unless
    `early` (the operator's explicit choice: later usage dated in the period is then refused).
    """
    _, end = period_bounds(period)
    if is_closed(db, period):
        return _load_close(db, period)
    if now_ms < end and not early:
        raise PeriodNotEnded(
            f"period {period} ends at {utc(end).isoformat()}; it cannot be closed before then"
        )
    due = end + policy.payment_terms_days * DAY_MS
    suspend = due + policy.grace_days * DAY_MS
    with savepoint(db, "vouchers_close"):
        db.conn.execute(
            "INSERT INTO ledger_period_closes (period, closed_at_ms) VALUES (?, ?)",
            [period, now_ms],
        )
        for party_kind, column in ((ENTERPRISE, "enterprise_id"), (PROVIDER, "provider_id")):
            rows = db.conn.execute(
                f"SELECT {column}, job_id, SUM(amount), SUM(voucher), SUM(deferred), COUNT(*) "
                f"FROM ledger_postings WHERE period = ? GROUP BY {column}, job_id "
                f"ORDER BY {column}, job_id",
                [period],
            ).fetchall()
            by_party: dict[str, list[dict[str, Any]]] = {}
            for party, job, total, voucher, deferred, count in rows:
                by_party.setdefault(party, []).append(
                    {
                        "job_id": job,
                        "total_micro_yuan": total,
                        "voucher_micro_yuan": voucher,
                        "deferred_micro_yuan": deferred,
                        "receipts": count,
                    }
                )
            db.conn.executemany(
                f"INSERT INTO ledger_statements ({_STATEMENT_COLUMNS}) "
                f"VALUES (?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        period,
                        party_kind,
                        party,
                        sum(line["total_micro_yuan"] for line in lines),
                        sum(line["voucher_micro_yuan"] for line in lines),
                        sum(line["deferred_micro_yuan"] for line in lines),
                        json.dumps(lines, separators=(",", ":")),
                        now_ms,
                        due if party_kind == ENTERPRISE else None,
                        suspend if party_kind == ENTERPRISE else None,
                    )
                    for party, lines in by_party.items()
                ],
            )
    return _load_close(db, period)


def _load_close(db: Session, period: str) -> PeriodClose:
    row = db.conn.execute(
        "SELECT closed_at_ms FROM ledger_period_closes WHERE period = ?", [period]
    ).fetchone()
    return PeriodClose(period, row[0], tuple(_statements(db, "period = ?", [period])))


def enterprise_statements(db: Session, enterprise_id: str, now_ms: int) -> list[dict[str, Any]]:
    """The enterprise's statements, oldest first, with what is paid (oldest first) and their status:
    "paid", "open" (not yet due), "late" (past due, within grace) or "overdue" (suspended)."""
    statements = statements_of(db, ENTERPRISE, enterprise_id)
    receivable = get_account(db, receivable_account(enterprise_id))
    unallocated = receivable.credits_posted if receivable else 0
    out = []
    for statement in statements:
        paid = min(unallocated, statement.deferred)
        unallocated -= paid
        outstanding = statement.deferred - paid
        assert statement.due_at_ms is not None and statement.suspend_after_ms is not None
        if outstanding == 0:
            status = "paid"
        elif now_ms > statement.suspend_after_ms:
            status = "overdue"
        elif now_ms > statement.due_at_ms:
            status = "late"
        else:
            status = "open"
        item = statement.to_dict()
        item.update(paid_micro_yuan=paid, outstanding_micro_yuan=outstanding, status=status)
        out.append(item)
    return out


def is_suspended(db: Session, enterprise_id: str, now_ms: int) -> tuple[bool, str]:
    """Whether the enterprise may not start jobs, and a sentence saying why (naming the
    statement)."""
    for item in enterprise_statements(db, enterprise_id, now_ms):
        if item["status"] == "overdue":
            grace = (item["suspend_after_ms"] - item["due_at_ms"]) // DAY_MS
            return True, (
                f"enterprise {enterprise_id} is suspended: its statement for {item['period']} "
                f"({yuan(item['deferred_micro_yuan'])} due {item['due_date']}) still has "
                f"{yuan(item['outstanding_micro_yuan'])} unpaid after the due date and {grace} "
                f"days' grace; paying it reinstates the account"
            )
    return False, f"enterprise {enterprise_id} has no overdue statement"
