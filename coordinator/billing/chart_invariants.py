"""What the chart of accounts adds to the ledger's own invariants: each usage posting consists
of exactly its legs, the quota accounts agree with the money they limit, and every open
reservation holds what its job may still be charged."""

from __future__ import annotations

from coordinator.billing.records import Account, short_hex
from coordinator.storage import Connection
from shared.ledger_names import (
    CAP,
    CREDIT_ACCOUNT,
    CREDIT_USED,
    EARNINGS,
    ENTITLEMENTS_USED,
    JOB_CAUSE,
    PENDING,
    POOL,
    POOL_HELD,
    POST_PENDING,
    POSTED,
    RECEIVABLE,
    RESERVATION,
    USAGE_CAP,
    USAGE_CREDIT,
    USAGE_DEFERRED,
    USAGE_POOL,
    USAGE_VOUCHER,
    VOID_PENDING,
    account_suffix,
    cap_account,
    credit_account,
    credit_line_account,
    earnings_account,
    entitlements_used_account,
    job_cause,
    name_pattern,
    pool_account,
    pool_held_account,
    receivable_account,
)

# the transfers a posting may consist of, as an SQL test of one transfer `t` of posting `p`.
# Voucher money goes from the pool to the provider's earnings directly, or (when the job's
# reservation held it) through pool_held, whose usage_pool legs must then bring in exactly
# what its usage_voucher legs pay out.
_POOL = f"'{POOL}:' || p.fiscal_year"
_POOL_HELD = f"'{POOL_HELD}:' || p.fiscal_year"
_EARNINGS = f"'{EARNINGS}:' || p.provider_id"
_DRAWS = f"t.kind IN ('{POSTED}', '{POST_PENDING}')"
_LEG_OK = (
    f"CASE t.code "
    f"WHEN '{USAGE_VOUCHER}' THEN t.kind = '{POSTED}' AND t.credit_account = {_EARNINGS} AND "
    f"(t.debit_account = {_POOL} OR t.debit_account = {_POOL_HELD}) "
    f"WHEN '{USAGE_POOL}' THEN {_DRAWS} AND t.debit_account = {_POOL} AND "
    f"t.credit_account = {_POOL_HELD} "
    f"WHEN '{USAGE_CAP}' THEN {_DRAWS} AND "
    f"t.debit_account = '{CAP}:' || p.fiscal_year || ':' || p.enterprise_uscc AND "
    f"t.credit_account = '{ENTITLEMENTS_USED}:' || p.fiscal_year "
    f"WHEN '{USAGE_DEFERRED}' THEN {_DRAWS} AND "
    f"t.debit_account = '{RECEIVABLE}:' || p.enterprise_id "
    f"AND t.credit_account = {_EARNINGS} "
    f"WHEN '{USAGE_CREDIT}' THEN {_DRAWS} AND "
    f"t.debit_account = '{CREDIT_ACCOUNT}:' || p.enterprise_id AND "
    f"t.credit_account = '{CREDIT_USED}' "
    f"ELSE FALSE END"
)


def _code_sum(code: str) -> str:
    return f"SUM(CASE t.code WHEN '{code}' THEN t.amount ELSE 0 END)"


def check_postings(conn: Connection, problems: list[str], most: int) -> None:
    """Each posting's transfers are exactly its legs, summing to its voucher and deferred parts.

    The whole table is checked in SQL (every leg of the right shape, the sums right); only
    postings found wrong (the first `most` of them) are read back to say how.
    """
    paid_from_held = (
        f"SUM(CASE WHEN t.code = '{USAGE_VOUCHER}' AND t.debit_account = "
        f"{_POOL_HELD} THEN t.amount ELSE 0 END)"
    )
    bad = conn.execute(
        f"SELECT p.receipt_digest FROM ledger_postings p "
        f"LEFT JOIN ledger_transfers t ON t.receipt_digest = p.receipt_digest "
        f"GROUP BY p.receipt_digest HAVING "
        f"SUM(CASE WHEN t.seq IS NOT NULL AND NOT COALESCE(({_LEG_OK}), FALSE) THEN 1 ELSE 0 END) "
        f"> 0 "
        f"OR {_code_sum(USAGE_VOUCHER)} <> p.voucher OR {_code_sum(USAGE_CAP)} <> p.voucher "
        f"OR {_code_sum(USAGE_DEFERRED)} <> p.deferred OR {_code_sum(USAGE_CREDIT)} <> p.deferred "
        f"OR {_code_sum(USAGE_POOL)} <> {paid_from_held} "
        f"OR NOT EXISTS (SELECT 1 FROM receipts r WHERE r.digest = p.receipt_digest)"
    ).fetchall()
    for (digest,) in bad[:most]:
        enterprise_id, provider_id, year, uscc, voucher, deferred, accepted = conn.execute(
            "SELECT enterprise_id, provider_id, fiscal_year, enterprise_uscc, voucher, deferred, "
            "EXISTS (SELECT 1 FROM receipts r WHERE r.digest = receipt_digest) "
            "FROM ledger_postings WHERE receipt_digest = ?",
            [digest],
        ).fetchone()
        if not accepted:
            problems.append(f"posting {short_hex(digest)} names no accepted receipt")
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
                    f"posting {short_hex(digest)} has a stray transfer {code} ({kind}) of "
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
                f"posting {short_hex(digest)} says voucher {voucher} µ¥ and deferred {deferred} "
                f"µ¥ but its transfers move voucher {got[0]}, cap {got[1]}, deferred {got[2]} and "
                f"credit {got[3]} µ¥"
            )
        if legs.get(USAGE_POOL, 0) != held:
            problems.append(
                f"posting {short_hex(digest)} pays {held} µ¥ of vouchers out of "
                f"{pool_held_account(year)} but draws {legs.get(USAGE_POOL, 0)} µ¥ "
                f"into it from the pool"
            )


def check_quotas(stored: dict[str, Account], problems: list[str]) -> None:
    """The quota accounts agree with the money they limit: each year's caps with its pool, each
    enterprise's credit with its limit less what it owes."""
    for account in stored.values():
        if account.kind == POOL:
            year = int(account_suffix(account.id))
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
        elif account.kind == CREDIT_ACCOUNT:
            enterprise_id = account_suffix(account.id)
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


def check_reservations(conn: Connection, problems: list[str]) -> None:
    """Every job whose reservation is not settled still holds what it may yet be charged.

    A job's holds are its pending transfers caused by `job:ID` on the credit ledger and on the
    pool (its cap hold mirrors the pool's, see `check_quotas`); what they still hold must be
    at least its maximum cost less what its postings charged, so usage within the maximum can
    always be paid. A job is settled once one of its holds was voided by code `reservation`.
    """
    held = dict(
        conn.execute(
            "SELECT h.cause, SUM(h.amount - COALESCE((SELECT SUM(d.amount) FROM ledger_transfers d "
            "WHERE d.pending_id = h.id), 0)) FROM ledger_transfers h "
            f"WHERE h.kind = '{PENDING}' AND h.cause LIKE '{name_pattern(JOB_CAUSE)}' "
            f"AND (h.debit_account LIKE '{name_pattern(CREDIT_ACCOUNT)}' "
            f"OR h.debit_account LIKE '{name_pattern(POOL)}') GROUP BY h.cause"
        )
    )
    settled = {
        row[0]
        for row in conn.execute(
            "SELECT DISTINCT cause FROM ledger_transfers WHERE pending_id IS NOT NULL "
            f"AND kind = '{VOID_PENDING}' AND code = '{RESERVATION}'"
        )
    }
    for job_id, max_cost, charged in conn.execute(
        "SELECT r.job_id, r.max_cost, (SELECT COALESCE(SUM(p.amount), 0) FROM ledger_postings p "
        "WHERE p.job_id = r.job_id) FROM ledger_reservations r"
    ):
        cause = job_cause(job_id)
        if cause in settled:
            continue
        still = max_cost - charged
        if held.get(cause, 0) < still:
            problems.append(
                f"job {job_id} may still be charged {still} µ¥ of its maximum "
                f"{max_cost} µ¥ but its reservation holds only {held.get(cause, 0)} µ¥"
            )
