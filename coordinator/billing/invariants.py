"""Every way the ledger could be wrong, found by recomputing it: balances from transfers, each
ledger balanced, limits kept, pending transfers resolved at most once, usage transfers naming
accepted receipts; and the chart of accounts' own rules (`chart_invariants`)."""

from __future__ import annotations

from coordinator.billing.accounts import ACCOUNT_COLUMNS, account_from_row
from coordinator.billing.chart_invariants import check_postings, check_quotas, check_reservations
from coordinator.billing.records import Account, short_hex
from coordinator.storage import Connection, DatabaseError, Session
from shared.ledger_names import (
    LEDGERS,
    PENDING,
    POST_PENDING,
    POSTED,
    USAGE_PREFIX,
    VOID_PENDING,
)

MAX_PROBLEMS = 100
# a usage code in SQL's LIKE, its underscore escaped
_USAGE_LIKE = USAGE_PREFIX.replace("_", "\\_") + "%"


def check_invariants(db: Session) -> list[str]:
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
    except DatabaseError as exc:  # e.g. "integer overflow" in SUM over tampered rows
        problems.append(f"the ledger cannot be summed: {exc}")
    if len(problems) > MAX_PROBLEMS:
        problems = problems[:MAX_PROBLEMS] + [f"… and {len(problems) - MAX_PROBLEMS} more problems"]
    return problems


def _check(conn: Connection, problems: list[str]) -> None:
    stored: dict[str, Account] = {
        row[0]: account_from_row(row)
        for row in conn.execute(f"SELECT {ACCOUNT_COLUMNS} FROM ledger_accounts")
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
        f"WHERE r.pending_id IS NOT NULL AND (p.id IS NULL OR p.kind <> '{PENDING}' "
        "OR p.debit_account <> r.debit_account OR p.credit_account <> r.credit_account "
        "OR r.seq < p.seq)"
    ):
        problems.append(
            f"transfer #{seq} resolves {short_hex(pending_id)}, which is not an earlier "
            f"pending transfer of the same accounts"
        )
    for pending_id, amount, resolved, voids, last_void, last in conn.execute(
        f"SELECT r.pending_id, p.amount, SUM(r.amount), "
        f"SUM(CASE WHEN r.kind = '{VOID_PENDING}' THEN 1 ELSE 0 END), "
        f"MAX(CASE WHEN r.kind = '{VOID_PENDING}' THEN r.seq END), MAX(r.seq) "
        "FROM ledger_transfers r JOIN ledger_transfers p ON p.id = r.pending_id "
        "WHERE r.pending_id IS NOT NULL GROUP BY r.pending_id, p.amount"
    ):
        if resolved > amount:
            problems.append(
                f"pending transfer {short_hex(pending_id)} of {amount} µ¥ was resolved for "
                f"{resolved} µ¥"
            )
        if voids > 1 or (voids == 1 and last_void != last):
            problems.append(
                f"pending transfer {short_hex(pending_id)} was resolved after it was voided"
            )

    for seq, code in conn.execute(
        "SELECT seq, code FROM ledger_transfers "
        f"WHERE (receipt_digest IS NULL) = (code LIKE '{_USAGE_LIKE}' ESCAPE '\\')"
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
                f"usage transfer #{seq} names receipt {short_hex(digest)}, which is not an "
                f"accepted receipt"
            )
        if not posted:
            problems.append(
                f"usage transfer #{seq} names receipt {short_hex(digest)}, which has no posting"
            )
    check_postings(conn, problems, MAX_PROBLEMS + 1)
    check_quotas(stored, problems)
    check_reservations(conn, problems)
