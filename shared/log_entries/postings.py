"""Money in the log: ledger postings, payments and period closes.

    posting      = [transfer_id (32 bytes), debit_account, credit_account, amount > 0, code]
    payment      [reference, party_id, amount, [posting, ...]]
    period_close [period "YYYY-MM", [statement, ...]]
    statement    = [party_kind, party_id, total, voucher, deferred, due_at_ms | None]

Accounts and transfer codes are named as in `shared.ledger_names`.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from shared.log_entries.fields import MAX_POSTINGS, array, digest, integer, text
from shared.log_entries.kinds import LogEntryError

MAX_STATEMENTS = 1_000_000
_PERIOD = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")


class Posting(NamedTuple):
    """One ledger transfer as logged: it debits one account and credits another."""

    transfer_id: bytes
    debit_account: str
    credit_account: str
    amount: int
    code: str

    def to_wire(self) -> list[Any]:
        return list(self)


class PaymentEntry(NamedTuple):
    """Money received from an enterprise or paid out to a provider, with its transfers."""

    reference: str
    party_id: str
    amount: int
    postings: tuple[Posting, ...]

    def to_wire(self) -> list[Any]:
        return [self.reference, self.party_id, self.amount, [p.to_wire() for p in self.postings]]


class Statement(NamedTuple):
    party_kind: str
    party_id: str
    total: int
    voucher: int
    deferred: int
    due_at_ms: int | None

    def to_wire(self) -> list[Any]:
        return list(self)


class PeriodCloseEntry(NamedTuple):
    period: str
    statements: tuple[Statement, ...]

    def to_wire(self) -> list[Any]:
        return [self.period, [s.to_wire() for s in self.statements]]


def parse_postings(value: Any) -> tuple[Posting, ...]:
    if type(value) is not list or len(value) > MAX_POSTINGS:
        raise LogEntryError(f"postings are an array of at most {MAX_POSTINGS} transfers")
    postings = []
    for item in value:
        transfer_id, debit, credit, amount, code = array(item, 5, "a posting")
        digest(transfer_id, "a posting's transfer_id")
        text(debit, "a posting's debit_account")
        text(credit, "a posting's credit_account")
        integer(amount, "a posting's amount", low=1)
        text(code, "a posting's code")
        postings.append(Posting(transfer_id, debit, credit, amount, code))
    return tuple(postings)


def check_postings(postings: tuple[Posting, ...]) -> None:
    """The checks `parse_postings` makes, on postings built by the coordinator."""
    if len(postings) > MAX_POSTINGS:
        raise LogEntryError(f"postings are an array of at most {MAX_POSTINGS} transfers")
    for posting in postings:
        digest(posting.transfer_id, "a posting's transfer_id")
        for name in (posting.debit_account, posting.credit_account, posting.code):
            text(name, "a posting's account or code")
        integer(posting.amount, "a posting's amount", low=1)


def parse_payment(body: Any) -> PaymentEntry:
    reference, party_id, amount, postings = array(body, 4, "a payment body")
    text(reference, "a payment's reference")
    text(party_id, "a payment's party_id")
    integer(amount, "a payment's amount", low=1)
    return PaymentEntry(reference, party_id, amount, parse_postings(postings))


def parse_period_close(body: Any) -> PeriodCloseEntry:
    period, statements = array(body, 2, "a period_close body")
    if type(period) is not str or not _PERIOD.fullmatch(period):
        raise LogEntryError(f"a period is written YYYY-MM, not {period!r:.40}")
    if type(statements) is not list or len(statements) > MAX_STATEMENTS:
        raise LogEntryError(f"a period close lists at most {MAX_STATEMENTS} statements")
    parsed = []
    for item in statements:
        party_kind, party_id, total, voucher, deferred, due = array(item, 6, "a statement")
        text(party_kind, "a statement's party_kind")
        text(party_id, "a statement's party_id")
        for amount, what in ((total, "total"), (voucher, "voucher"), (deferred, "deferred")):
            integer(amount, f"a statement's {what}")
        if due is not None:
            integer(due, "a statement's due_at_ms")
        parsed.append(Statement(party_kind, party_id, total, voucher, deferred, due))
    return PeriodCloseEntry(period, tuple(parsed))
