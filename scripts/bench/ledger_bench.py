"""Benchmark: usage postings per second into a file-backed ledger, batched as the writer thread
batches them, and the time `check_invariants` takes over a million transfers."""

from __future__ import annotations

import argparse
import hashlib
import sqlite3
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from coordinator import billing
from coordinator.storage import Session, connect, transaction
from shared import ledger_names as names
from shared.uscc import check_character

NOW = 1_790_000_000_000  # 2026-09-21
POLICY = billing.VoucherPolicy(fiscal_year=2026, default_credit_limit_micro_yuan=10**14)


def _uscc(n: int) -> str:
    prefix = f"9144000010{n:07d}"
    return prefix + check_character(prefix)


def _digest(n: int) -> bytes:
    return hashlib.sha256(b"bench receipt %d" % n).digest()


def _insert_receipts(conn: sqlite3.Connection, rows: Iterable[Sequence[object]]) -> None:
    """Accepted receipts, all under one placeholder acknowledgement."""
    conn.execute(
        "INSERT OR IGNORE INTO receipt_acknowledgements (id, agent_id, accepted_at_ms, "
        "envelope) VALUES (1, 'a', ?, x'00')",
        [NOW],
    )
    conn.executemany(
        "INSERT INTO receipts (lease_id, seq, agent_id, envelope, digest, "
        "issued_at_ms, accepted_at_ms, gpu_ms, amount, delta, final, "
        "acknowledgement_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        rows,
    )


def _world(
    db: Session, enterprises: int, providers: int, receipts: int
) -> list[tuple[str, str, str, str, str, str]]:
    """Companies, one job and lease per enterprise, and the accepted receipts to post."""
    conn = db.conn
    with transaction(db):
        conn.executemany(
            "INSERT INTO providers (id, name, uscc, created_at_ms) VALUES (?,?,?,?)",
            [(f"prov-{p}", "P", _uscc(100_000 + p), NOW) for p in range(providers)],
        )
        conn.executemany(
            "INSERT INTO agents (agent_id, provider_id, public_key, hostname, "
            "enrolled_at_ms) VALUES (?,?,?,?,?)",
            [(f"agent-{p}", f"prov-{p}", b"k" * 32, "h", NOW) for p in range(providers)],
        )
        conn.executemany(
            "INSERT INTO enterprises (id, name, uscc, created_at_ms) VALUES (?,?,?,?)",
            [(f"ent-{e}", "E", _uscc(e), NOW) for e in range(enterprises)],
        )
        for e in range(enterprises):
            billing.open_enterprise_accounts(db, f"ent-{e}", _uscc(e), POLICY, NOW)
        conn.executemany(
            "INSERT INTO jobs (id, enterprise_id, idempotency_key, spec, state, "
            "created_at_ms) VALUES (?,?,?,?,?,?)",
            [(f"job-{e}", f"ent-{e}", f"k{e}", "{}", "running", NOW) for e in range(enterprises)],
        )
        conn.executemany(
            "INSERT INTO leases (id, job_id, agent_id, gpu_uuids, price_per_gpu_hour, "
            "created_at_ms, start_deadline_ms, ends_at_ms, state) "
            "VALUES (?,?,?,?,?,?,?,?,?)",
            [
                (
                    f"lease-{e}",
                    f"job-{e}",
                    f"agent-{e % providers}",
                    "[]",
                    1,
                    NOW,
                    NOW,
                    NOW,
                    "running",
                )
                for e in range(enterprises)
            ],
        )
        for e in range(enterprises):
            billing.reserve_job(db, f"job-{e}", f"ent-{e}", 10**12, policy=POLICY, now_ms=NOW)
        _insert_receipts(
            conn,
            [
                (
                    f"lease-{r % enterprises}",
                    r // enterprises + 1,
                    "a",
                    b"e",
                    _digest(r),
                    NOW,
                    NOW,
                    0,
                    0,
                    0,
                    0,
                    1,
                )
                for r in range(receipts)
            ],
        )
    return [
        (
            f"ent-{r % enterprises}",
            f"prov-{r % enterprises % providers}",
            _uscc(r % enterprises),
            _uscc(100_000 + r % enterprises % providers),
            f"lease-{r % enterprises}",
            f"job-{r % enterprises}",
        )
        for r in range(receipts)
    ]


def bench_postings(
    path: Path, count: int, batch: int, enterprises: int, providers: int, together: bool
) -> None:
    """`post_usage` once per receipt (each in a savepoint, as the writer wraps a call), or
    `post_usages` once per batch (as the coordinator posts a batch of receipts)."""
    db = connect(path)
    plan = _world(db, enterprises, providers, count)
    conn = db.conn
    transfers_before = conn.execute("SELECT COUNT(*) FROM ledger_transfers").fetchone()[0]

    def usage(r: int) -> billing.Usage:
        ent, prov, ent_uscc, prov_uscc, lease, job = plan[r]
        return billing.Usage(ent, prov, ent_uscc, prov_uscc, lease, job, _digest(r), 1_000_000 + r)

    start = time.perf_counter()
    for first in range(0, count, batch):
        conn.execute("BEGIN IMMEDIATE")
        numbers = range(first, min(first + batch, count))
        if together:
            billing.post_usages(db, [usage(r) for r in numbers], policy=POLICY, now_ms=NOW)
        for r in numbers if not together else ():
            conn.execute("SAVEPOINT call")
            u = usage(r)
            billing.post_usage(
                db,
                enterprise_id=u.enterprise_id,
                provider_id=u.provider_id,
                enterprise_uscc=u.enterprise_uscc,
                provider_uscc=u.provider_uscc,
                lease_id=u.lease_id,
                job_id=u.job_id,
                receipt_digest=u.receipt_digest,
                amount=u.amount,
                policy=POLICY,
                now_ms=NOW,
            )
            conn.execute("RELEASE call")
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    transfers = (
        conn.execute("SELECT COUNT(*) FROM ledger_transfers").fetchone()[0] - transfers_before
    )
    problems = billing.check_invariants(db)
    db.conn.close()
    how = "post_usages, one call per batch" if together else "post_usage, one call each"
    print(
        f"usage postings     {count:,} in batches of {batch} per transaction ({how}), "
        f"{enterprises} enterprises, {providers} providers (file-backed, WAL)"
    )
    print(
        f"                   {count / elapsed:10,.0f} postings/s   {transfers / elapsed:10,.0f} "
        f"transfers/s   ({transfers / count:.1f} transfers each)"
    )
    print(f"                   invariants after: {'hold' if not problems else problems[:3]}")


def bench_invariants(path: Path, transfers: int, enterprises: int, providers: int) -> None:
    """A ledger of `transfers` usage transfers written straight in the schema, then checked."""
    db = connect(path)
    conn = db.conn
    postings = transfers // 4
    started = time.perf_counter()
    with transaction(db):
        for e in range(enterprises):
            billing.open_enterprise_accounts(db, f"ent-{e}", _uscc(e), POLICY, NOW)
        for p in range(providers):
            billing.open_account(
                db,
                names.earnings_account(f"prov-{p}"),
                ledger=names.CNY,
                kind=names.EARNINGS,
                owner=f"prov-{p}",
                flags=names.DEBITS_MUST_NOT_EXCEED_CREDITS,
                now_ms=NOW,
            )
    conn.execute("PRAGMA foreign_keys = OFF")  # bulk load: leases and jobs are not needed here
    balances: dict[str, list[int]] = {}

    def move(debit: str, credit: str, amount: int) -> None:
        balances.setdefault(debit, [0, 0])[0] += amount
        balances.setdefault(credit, [0, 0])[1] += amount

    receipt_rows, posting_rows, transfer_rows = [], [], []
    for r in range(postings):
        e, p = r % enterprises, r % providers
        ent, uscc, digest = f"ent-{e}", _uscc(e), _digest(r)
        voucher, deferred = 50 + r % 7, 60 + r % 11
        cause = "receipt:" + digest.hex()
        receipt_rows.append(
            (f"lease-{e}", r // enterprises + 1, "a", b"e", digest, NOW, NOW, 0, 0, 0, 0, 1)
        )
        posting_rows.append(
            (
                digest,
                ent,
                f"prov-{p}",
                uscc,
                _uscc(100_000 + p),
                f"lease-{e}",
                f"job-{e}",
                voucher + deferred,
                voucher,
                deferred,
                billing.COVERED,
                2026,
                "2026-09",
                NOW,
            )
        )
        for leg, debit, credit, amount, code in (
            (
                "voucher",
                names.pool_account(2026),
                names.earnings_account(f"prov-{p}"),
                voucher,
                names.USAGE_VOUCHER,
            ),
            (
                "cap",
                names.cap_account(2026, uscc),
                names.entitlements_used_account(2026),
                voucher,
                names.USAGE_CAP,
            ),
            (
                "deferred",
                names.receivable_account(ent),
                names.earnings_account(f"prov-{p}"),
                deferred,
                names.USAGE_DEFERRED,
            ),
            ("credit", names.credit_account(ent), names.CREDIT_USED, deferred, names.USAGE_CREDIT),
        ):
            transfer_rows.append(
                (
                    billing.transfer_id(cause, leg),
                    debit,
                    credit,
                    amount,
                    code,
                    cause,
                    names.POSTED,
                    None,
                    digest,
                    NOW,
                )
            )
            move(debit, credit, amount)
    with transaction(db):
        _insert_receipts(conn, receipt_rows)
        conn.executemany(
            "INSERT INTO ledger_postings (receipt_digest, enterprise_id, provider_id, "
            "enterprise_uscc, provider_uscc, lease_id, job_id, amount, voucher, "
            "deferred, reason, fiscal_year, period, at_ms) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            posting_rows,
        )
        conn.executemany(
            "INSERT INTO ledger_transfers (id, debit_account, credit_account, amount, "
            "code, cause, kind, pending_id, receipt_digest, at_ms) "
            "VALUES (?,?,?,?,?,?,?,?,?,?)",
            transfer_rows,
        )
        conn.executemany(
            "UPDATE ledger_accounts SET debits_posted = debits_posted + ?, "
            "credits_posted = credits_posted + ? WHERE id = ?",
            [(d, c, a) for a, (d, c) in balances.items()],
        )
    built = time.perf_counter() - started
    total = conn.execute("SELECT COUNT(*) FROM ledger_transfers").fetchone()[0]
    size = path.stat().st_size
    start = time.perf_counter()
    problems = billing.check_invariants(db)
    elapsed = time.perf_counter() - start
    conn.close()
    print(
        f"check_invariants   {total:,} transfers ({postings:,} postings, {size / 2**20:,.0f} MiB; "
        f"built in {built:.1f} s)"
    )
    print(
        f"                   {elapsed:10.2f} s   {total / elapsed:10,.0f} transfers/s checked   "
        f"-> {'all hold' if not problems else problems[:3]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--postings", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--enterprises", type=int, default=1_000)
    parser.add_argument("--providers", type=int, default=100)
    parser.add_argument("--transfers", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, help="where to put the databases (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="suanli-bench-", dir=args.dir) as tmp:
        for together in (False, True):
            bench_postings(
                Path(tmp) / f"postings-{together}.db",
                args.postings,
                args.batch,
                args.enterprises,
                args.providers,
                together,
            )
        bench_invariants(
            Path(tmp) / "invariants.db", args.transfers, args.enterprises, args.providers
        )


if __name__ == "__main__":
    main()
